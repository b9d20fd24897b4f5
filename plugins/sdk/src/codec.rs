//! A small versioned byte codec for plugin state.
//!
//! The host keeps a plugin's state between calls (per device and sensor,
//! per edge node and stage) and hands it back unread. A plugin built on
//! this SDK describes its state as a Rust type implementing [`Codec`]; the
//! SDK writes it with a version header ([`save`]) and reads it back
//! ([`load`]). A state written under another version, or one that does not
//! decode to the end (what an older build of the plugin left behind before
//! a hot reload), is refused and the plugin starts afresh, so changing the
//! state's shape needs nothing more than a new version number.
//!
//! The encoding is little-endian and positional: numbers in fixed width,
//! strings and sequences with a `u32` length before them. It is implemented
//! for the numeric primitives, `bool`, `String`, `Option`, `Vec`, arrays,
//! `BTreeMap` and tuples of up to four; a plugin's own struct implements it
//! by encoding its fields in order.

use std::collections::BTreeMap;

/// A value that can be written to and read back from plugin state.
pub trait Codec: Sized {
    /// Appends this value to `out`.
    fn encode(&self, out: &mut Encoder);
    /// Reads a value written by [`Codec::encode`]; `None` when the bytes
    /// are not one.
    fn decode(input: &mut Decoder<'_>) -> Option<Self>;
}

/// Where [`Codec::encode`] writes.
#[derive(Default, Debug)]
pub struct Encoder {
    bytes: Vec<u8>,
}

impl Encoder {
    /// Raw bytes, without a length: the reader must know how many.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// A length prefix for a sequence, string or map.
    pub fn len(&mut self, len: usize) {
        let len = u32::try_from(len).expect("a state sequence longer than u32::MAX");
        self.raw(&len.to_le_bytes());
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// What [`Codec::decode`] reads from.
#[derive(Debug)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next `n` bytes, or `None` when fewer are left.
    pub fn raw(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    /// A length written by [`Encoder::len`]. A length beyond the bytes
    /// left is refused, so damaged state cannot make the plugin reserve
    /// gigabytes (a sequence of zero-sized values, such as `Vec<()>`, is
    /// the one thing this turns away wrongly; a state has no need of one).
    pub fn len(&mut self) -> Option<usize> {
        let len = u32::decode(self)? as usize;
        (len <= self.rest.len()).then_some(len)
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// The state bytes for `value` under layout `version`. A value that
/// encodes to nothing (a stateless plugin's `()`) is stored as nothing.
pub fn save<S: Codec>(version: u32, value: &S) -> Vec<u8> {
    let mut out = Encoder::default();
    version.encode(&mut out);
    let header = out.bytes.len();
    value.encode(&mut out);
    if out.bytes.len() == header {
        return Vec::new();
    }
    out.into_bytes()
}

/// The state [`save`] wrote under `version`; `None` for no state, another
/// version, or bytes that do not decode exactly.
pub fn load<S: Codec>(version: u32, bytes: &[u8]) -> Option<S> {
    if bytes.is_empty() {
        // Only a value that encodes to nothing was saved as nothing.
        let mut empty = Decoder::new(&[]);
        return S::decode(&mut empty);
    }
    let mut input = Decoder::new(bytes);
    if u32::decode(&mut input)? != version {
        return None;
    }
    let value = S::decode(&mut input)?;
    input.is_empty().then_some(value)
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Encoder) {
                out.raw(&self.to_le_bytes());
            }
            fn decode(input: &mut Decoder<'_>) -> Option<Self> {
                let bytes = input.raw(core::mem::size_of::<$t>())?;
                Some(<$t>::from_le_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}
numbers!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

impl Codec for () {
    fn encode(&self, _: &mut Encoder) {}
    fn decode(_: &mut Decoder<'_>) -> Option<Self> {
        Some(())
    }
}

impl Codec for bool {
    fn encode(&self, out: &mut Encoder) {
        out.raw(&[u8::from(*self)]);
    }
    fn decode(input: &mut Decoder<'_>) -> Option<Self> {
        match input.raw(1)? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

impl Codec for String {
    fn encode(&self, out: &mut Encoder) {
        out.len(self.len());
        out.raw(self.as_bytes());
    }
    fn decode(input: &mut Decoder<'_>) -> Option<Self> {
        let len = input.len()?;
        String::from_utf8(input.raw(len)?.to_vec()).ok()
    }
}

impl<T: Codec> Codec for Option<T> {
    fn encode(&self, out: &mut Encoder) {
        match self {
            None => out.raw(&[0]),
            Some(v) => {
                out.raw(&[1]);
                v.encode(out);
            }
        }
    }
    fn decode(input: &mut Decoder<'_>) -> Option<Self> {
        match input.raw(1)? {
            [0] => Some(None),
            [1] => Some(Some(T::decode(input)?)),
            _ => None,
        }
    }
}

impl<T: Codec> Codec for Vec<T> {
    fn encode(&self, out: &mut Encoder) {
        out.len(self.len());
        for v in self {
            v.encode(out);
        }
    }
    fn decode(input: &mut Decoder<'_>) -> Option<Self> {
        let len = input.len()?;
        (0..len).map(|_| T::decode(input)).collect()
    }
}

impl<T: Codec, const N: usize> Codec for [T; N] {
    fn encode(&self, out: &mut Encoder) {
        for v in self {
            v.encode(out);
        }
    }
    fn decode(input: &mut Decoder<'_>) -> Option<Self> {
        let items: Vec<T> = (0..N).map(|_| T::decode(input)).collect::<Option<_>>()?;
        items.try_into().ok()
    }
}

impl<K: Codec + Ord, V: Codec> Codec for BTreeMap<K, V> {
    fn encode(&self, out: &mut Encoder) {
        out.len(self.len());
        for (k, v) in self {
            k.encode(out);
            v.encode(out);
        }
    }
    fn decode(input: &mut Decoder<'_>) -> Option<Self> {
        let len = input.len()?;
        (0..len)
            .map(|_| Some((K::decode(input)?, V::decode(input)?)))
            .collect()
    }
}

macro_rules! tuples {
    ($(($($name:ident),+)),*) => {$(
        impl<$($name: Codec),+> Codec for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode(&self, out: &mut Encoder) {
                let ($($name,)+) = self;
                $($name.encode(out);)+
            }
            fn decode(input: &mut Decoder<'_>) -> Option<Self> {
                Some(($($name::decode(input)?,)+))
            }
        }
    )*};
}
tuples!((A), (A, B), (A, B, C), (A, B, C, D));

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Example {
        count: u64,
        mean: f64,
        names: BTreeMap<String, (bool, Option<i64>)>,
        ring: [f32; 3],
    }

    impl Codec for Example {
        fn encode(&self, out: &mut Encoder) {
            self.count.encode(out);
            self.mean.encode(out);
            self.names.encode(out);
            self.ring.encode(out);
        }
        fn decode(input: &mut Decoder<'_>) -> Option<Self> {
            Some(Self {
                count: Codec::decode(input)?,
                mean: Codec::decode(input)?,
                names: Codec::decode(input)?,
                ring: Codec::decode(input)?,
            })
        }
    }

    fn example() -> Example {
        Example {
            count: u64::MAX,
            mean: -0.125,
            names: BTreeMap::from([
                ("a/t".to_string(), (true, Some(-3))),
                ("ü".to_string(), (false, None)),
            ]),
            ring: [1.5, f32::NAN, 0.0],
        }
    }

    #[test]
    fn a_state_round_trips_under_its_version() {
        let bytes = save(7, &example());
        let back: Example = load(7, &bytes).unwrap();
        assert_eq!(back.count, u64::MAX);
        assert_eq!(back.names, example().names);
        assert!(back.ring[1].is_nan());
    }

    #[test]
    fn another_version_or_damaged_bytes_start_afresh() {
        let bytes = save(7, &example());
        assert!(load::<Example>(8, &bytes).is_none());
        assert!(load::<Example>(7, &bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(load::<Example>(7, &longer).is_none());
        assert!(load::<Example>(7, &[]).is_none());
        // What the shipped edge rules stored before: JSON text.
        assert!(load::<BTreeMap<String, f64>>(1, br#"{"a/t":1.0}"#).is_none());
    }

    #[test]
    fn a_stateless_plugin_stores_nothing() {
        assert!(save(1, &()).is_empty());
        assert_eq!(load::<()>(1, &[]), Some(()));
    }
}
