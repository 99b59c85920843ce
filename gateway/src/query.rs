//! Query strings (`application/x-www-form-urlencoded`).

/// The first value of parameter `name`, decoded; `None` if absent or not UTF-8.
pub fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k).as_deref() == Some(name))
            .then(|| decode(v))
            .flatten()
    })
}

/// `application/x-www-form-urlencoded` decoding; `None` if not valid UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Removes every occurrence of parameter `name` from the URI's query.
pub fn remove_param(uri: &mut http::Uri, name: &str) {
    let Some(query) = uri.query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            decode(key).as_deref() != Some(name)
        })
        .collect();
    let path = uri.path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(new) = http::Uri::from_parts(parts) {
            *uri = new;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_parameters() {
        assert_eq!(
            param("a=1&key=test%2Dkey&b", "key").as_deref(),
            Some("test-key")
        );
        assert_eq!(
            param("payload=%7B%22a%22%3A+1%7D", "payload").as_deref(),
            Some("{\"a\": 1}")
        );
        assert_eq!(param("b", "b").as_deref(), Some(""));
        assert_eq!(param("a=1", "key"), None);
        assert_eq!(decode("100%").as_deref(), Some("100%"));
        assert_eq!(decode("%ff"), None);
    }

    #[test]
    fn removes_parameters() {
        let mut uri: http::Uri = "/p?a=1&jwt=x&b=2&jwt=y".parse().unwrap();
        remove_param(&mut uri, "jwt");
        assert_eq!(uri, "/p?a=1&b=2");
        remove_param(&mut uri, "a");
        remove_param(&mut uri, "b");
        assert_eq!(uri, "/p");
    }
}
