//! Checks on captured process logs: a secret must never appear in them.

/// The shortest secret [`assert_no_secret_in`] accepts: shorter strings would match by
/// chance.
pub const MIN_SECRET_LEN: usize = 8;

/// Asserts that none of `secrets` occurs in `log`, neither as plain text nor in the
/// encodings a careless `Debug` or serializer would produce (standard and URL-safe
/// base64, lowercase hex, and Rust's `Debug` of a byte vector).
///
/// Panics with a message naming which secret (by index, never its value) leaked and in
/// which encoding.
pub fn assert_no_secret_in(log: &str, secrets: &[&str]) {
    for (index, secret) in secrets.iter().enumerate() {
        assert!(
            secret.len() >= MIN_SECRET_LEN,
            "secret #{index} is shorter than {MIN_SECRET_LEN} bytes: too short to search a log for"
        );
        for (encoding, needle) in encodings(secret.as_bytes()) {
            let found = log.find(&needle);
            assert!(
                found.is_none(),
                "secret #{index} (length {}) appears in the log ({encoding}) at byte {}: \
                 the agent must never log secret values",
                secret.len(),
                found.unwrap_or_default()
            );
        }
    }
}

/// Returns the first secret (by index) that occurs in `log` in any checked encoding.
pub fn find_secret_in(log: &str, secrets: &[&str]) -> Option<usize> {
    secrets.iter().position(|secret| {
        encodings(secret.as_bytes())
            .iter()
            .any(|(_, needle)| log.contains(needle.as_str()))
    })
}

fn encodings(secret: &[u8]) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("plain", String::from_utf8_lossy(secret).into_owned()),
        (
            "base64",
            base64(secret, STANDARD).trim_end_matches('=').to_owned(),
        ),
        (
            "base64url",
            base64(secret, URL_SAFE).trim_end_matches('=').to_owned(),
        ),
        ("hex", secret.iter().map(|b| format!("{b:02x}")).collect()),
        ("debug bytes", format!("{secret:?}")),
    ];
    // Drop duplicate needles (a secret of hex digits is its own "plain" and so on).
    out.dedup_by(|a, b| a.1 == b.1);
    out
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with padding, small and dependency-free (only used to search logs).
fn base64(input: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(alphabet[*s as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b"", STANDARD), "");
        assert_eq!(base64(b"f", STANDARD), "Zg==");
        assert_eq!(base64(b"fo", STANDARD), "Zm8=");
        assert_eq!(base64(b"foo", STANDARD), "Zm9v");
        assert_eq!(base64(b"foobar", STANDARD), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff], URL_SAFE), "-_8=");
    }

    #[test]
    fn finds_plain_and_encoded_secrets() {
        let secret = "s3cr3t-value-42";
        assert_eq!(find_secret_in("nothing here", &[secret]), None);
        assert_eq!(find_secret_in("x s3cr3t-value-42 y", &[secret]), Some(0));
        let b64 = base64(secret.as_bytes(), STANDARD);
        assert_eq!(
            find_secret_in(&format!("token={b64}"), &["other-secret", secret]),
            Some(1)
        );
        let debug = format!("{:?}", secret.as_bytes());
        assert_eq!(find_secret_in(&debug, &[secret]), Some(0));
    }

    #[test]
    #[should_panic(expected = "appears in the log")]
    fn assert_panics_on_a_leak() {
        assert_no_secret_in("value=s3cr3t-value-42", &["s3cr3t-value-42"]);
    }
}
