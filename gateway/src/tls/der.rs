//! The few facts the gateway reads from an X.509 certificate itself: its serial, its
//! validity period and whether it is self-issued. A small DER reader, bounds-checked
//! everywhere; signature and name checks are rustls's business.

/// What the gateway needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Hex bytes joined by `:` (OpenBao's `serial_number` format).
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Issuer and subject are the same name (a root; not sent in a chain).
    pub self_issued: bool,
}

/// A certificate that is not DER this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct DerError(&'static str);

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION_TAG: u8 = 0xa0;

/// One TLV: its tag, its content, what follows it.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("high tag numbers are not used in certificates"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(DerError("unsupported length"));
        }
        let (bytes, after) = rest.split_at_checked(n).ok_or(DerError("truncated"))?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (content, after) = rest.split_at_checked(len).ok_or(DerError("truncated"))?;
    Ok((tag, content, after))
}

fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DerError> {
    let (t, content, rest) = tlv(input)?;
    if t == tag {
        Ok((content, rest))
    } else {
        Err(DerError(what))
    }
}

/// Reads a certificate's serial, validity and issuer/subject equality.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, DerError> {
    let (cert, _) = expect(der, SEQUENCE, "not a certificate")?;
    let (tbs, _) = expect(cert, SEQUENCE, "no tbsCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION_TAG) {
        rest = tlv(rest)?.2;
    }
    let (serial, rest) = expect(rest, INTEGER, "no serial number")?;
    let (_signature, rest) = expect(rest, SEQUENCE, "no signature algorithm")?;
    let (issuer_tag, issuer, rest) = tlv(rest)?;
    let (validity, rest) = expect(rest, SEQUENCE, "no validity")?;
    let (subject_tag, subject, _) = tlv(rest)?;
    let (not_before, after) = time(validity)?;
    let (not_after, _) = time(after)?;
    // A positive INTEGER may carry a leading 0x00; the serial is the number.
    let digits = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    let serial = digits
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(CertInfo {
        serial,
        not_before,
        not_after,
        self_issued: issuer_tag == subject_tag && issuer == subject,
    })
}

/// A UTCTime or GeneralizedTime (`Z` form, as RFC 5280 requires), as Unix seconds.
fn time(input: &[u8]) -> Result<(i64, &[u8]), DerError> {
    let (tag, content, rest) = tlv(input)?;
    let (year, body) = match (tag, content) {
        (UTC_TIME, [y1, y2, body @ ..]) => {
            let yy = digits2(*y1, *y2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, body)
        }
        (GENERALIZED_TIME, [y1, y2, y3, y4, body @ ..]) => {
            (digits2(*y1, *y2)? * 100 + digits2(*y3, *y4)?, body)
        }
        _ => return Err(DerError("bad validity time")),
    };
    let [mo1, mo2, d1, d2, h1, h2, mi1, mi2, s1, s2, b'Z'] = *body else {
        return Err(DerError("validity time not in YYMMDDHHMMSSZ form"));
    };
    let month = digits2(mo1, mo2)?;
    let day = digits2(d1, d2)?;
    let (hour, minute, second) = (digits2(h1, h2)?, digits2(mi1, mi2)?, digits2(s1, s2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(DerError("validity time out of range"));
    }
    let days = days_from_civil(year, month, day);
    Ok((
        days * 86_400 + hour * 3_600 + minute * 60 + second.min(60),
        rest,
    ))
}

fn digits2(a: u8, b: u8) -> Result<i64, DerError> {
    if a.is_ascii_digit() && b.is_ascii_digit() {
        Ok(i64::from(a - b'0') * 10 + i64::from(b - b'0'))
    } else {
        Err(DerError("non-digit in a time"))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }

    #[test]
    fn times_in_both_forms() {
        let utc = [&[UTC_TIME, 13][..], b"250102030405Z"].concat();
        assert_eq!(time(&utc).map(|t| t.0), Ok(1_735_787_045));
        let generalized = [&[GENERALIZED_TIME, 15][..], b"20500102030405Z"].concat();
        assert_eq!(time(&generalized).map(|t| t.0), Ok(2_524_705_445));
        let bad = [&[UTC_TIME, 13][..], b"251302030405Z"].concat();
        assert!(time(&bad).is_err());
        assert!(time(&[UTC_TIME, 40, 1]).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01",
        ] {
            assert!(cert_info(input).is_err());
        }
    }
}
