//! Small pieces of the HTTP/1.1 wire format shared by the server loop and the upstream
//! client.

use http::HeaderMap;

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// Appends `n` in lowercase hexadecimal (a chunk size).
pub(crate) fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = HEX[(n & 0xf) as usize];
        }
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// The comma-separated elements of a header value, trimmed, empty ones skipped.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether the field name `name` is `lower` in any case. `lower` is a lower-case name
/// of letters, digits and `-`; `name` is a field name as a head brings it (a token:
/// httparse and `HeaderName` take nothing else). Setting bit 0x20 of each of `name`'s
/// bytes folds an upper-case letter onto its lower case and leaves every other token
/// byte as it is (the bytes it would map onto `-` or a digit are control characters),
/// so eight bytes are compared at a time where `eq_ignore_ascii_case` lower-cases
/// both sides byte by byte: the head parsers compare every field name with several.
#[inline]
pub(crate) fn is_name(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = u64::from_ne_bytes([0x20; 8]);
    debug_assert!(
        lower
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'),
        "is_name compares with lower-case names of letters, digits and '-'"
    );
    if name.len() != lower.len() {
        return false;
    }
    let (mut name, mut lower) = (name, lower);
    while let (Some((n, name_rest)), Some((l, lower_rest))) = (
        name.split_first_chunk::<8>(),
        lower.split_first_chunk::<8>(),
    ) {
        if u64::from_ne_bytes(*n) | FOLD != u64::from_ne_bytes(*l) {
            return false;
        }
        (name, lower) = (name_rest, lower_rest);
    }
    name.iter().zip(lower).all(|(n, l)| n | 0x20 == *l)
}

/// Where a header's name and value sit in a head: offsets and lengths, so that once the
/// head is frozen its values can share its bytes.
#[derive(Clone, Copy, Default)]
pub(crate) struct Span {
    pub(crate) name: (u32, u32),
    pub(crate) value: (u32, u32),
}

/// The offset and length of `part`, a slice of `buf`.
pub(crate) fn span_in(buf: &[u8], part: &[u8]) -> (u32, u32) {
    let offset = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    (
        u32::try_from(offset).unwrap_or(u32::MAX),
        u32::try_from(part.len()).unwrap_or(0),
    )
}

/// The bytes a [`span_in`] result names (empty if it is out of range).
pub(crate) fn part(head: &[u8], (at, len): (u32, u32)) -> &[u8] {
    let (at, len) = (at as usize, len as usize);
    head.get(at..at.saturating_add(len)).unwrap_or_default()
}

/// How many bytes `headers` take as `name: value\r\n` lines: a head's buffer is sized
/// once, since growing it midway copies it.
pub(crate) fn fields_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Appends the field `name: value\r\n`.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `content-length: n\r\n`.
pub(crate) fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes httparse takes in a field name (RFC 9110 `tchar`).
    fn is_token_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    #[test]
    fn is_name_ignores_case_and_nothing_else() {
        let known: [&[u8]; 6] = [
            b"te",
            b"date",
            b"connection",
            b"content-length",
            b"transfer-encoding",
            b"proxy-authorization",
        ];
        for lower in known {
            assert!(is_name(lower, lower));
            assert!(is_name(&lower.to_ascii_uppercase(), lower));
            assert!(!is_name(&lower[1..], lower), "shorter");
            let mut longer = lower.to_vec();
            longer.push(b's');
            assert!(!is_name(&longer, lower), "longer");
            // Any one token byte changed, in the first eight bytes or after them:
            // equal exactly when it is the same letter in the other case.
            for at in 0..lower.len() {
                for b in (0..=255u8).filter(|b| is_token_byte(*b)) {
                    let mut name = lower.to_vec();
                    name[at] = b;
                    assert_eq!(
                        is_name(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{:?} against {:?}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(lower),
                    );
                }
            }
        }
    }
}
