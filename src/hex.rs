//! Lowercase hex text of bytes: device secrets, certificate serials and
//! plugin content hashes are written so (and a serial read back from a
//! certificate must match the one issued, so both use this one function).

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_become_two_lowercase_digits_each() {
        assert_eq!(super::hex(&[0x00, 0x7f, 0xab, 0xff]), "007fabff");
        assert_eq!(super::hex(&[]), "");
    }
}
