//! The Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload`, Sparkplug
//! 3.0), written out as prost messages so the build needs no `protoc`.
//!
//! Only the fields this dialect writes or reads are declared: a metric's
//! name, alias, timestamp, datatype, flags, properties and scalar value.
//! Data sets, templates, metadata and extensions are skipped on decode
//! (protobuf ignores fields a reader does not know), so a payload that
//! carries them still reads.

/// The Sparkplug data types this dialect writes or reads by number (the
/// `datatype` of a metric or property value; the others read by value).
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Time of sending, ms since the Unix epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0–255, per edge node; absent in NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<Value>,
}

/// A metric's value. Signed integers travel as their two's complement in
/// the unsigned field of their width (`Int8`–`Int32` in `int_value`,
/// `Int64` in `long_value`).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(uint32, tag = "10")]
    Int(u32),
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyKind", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyKind {
    #[prost(uint32, tag = "3")]
    Int(u32),
    #[prost(uint64, tag = "4")]
    Long(u64),
    #[prost(float, tag = "5")]
    Float(f32),
    #[prost(double, tag = "6")]
    Double(f64),
    #[prost(bool, tag = "7")]
    Boolean(bool),
    #[prost(string, tag = "8")]
    String(String),
}

impl Metric {
    /// The value as a number, read by the metric's data type (`datatype`
    /// from its birth when the message left it out); `None` for text,
    /// bytes, null and unknown types.
    pub fn number(&self, datatype: Option<u32>) -> Option<f64> {
        if self.is_null == Some(true) {
            return None;
        }
        let dt = self.datatype.or(datatype);
        Some(match self.value.as_ref()? {
            Value::Int(v) => match dt {
                Some(datatype::INT8) => *v as i8 as f64,
                Some(datatype::INT16) => *v as i16 as f64,
                Some(datatype::INT32) => *v as i32 as f64,
                _ => *v as f64,
            },
            Value::Long(v) => match dt {
                Some(datatype::INT64) => *v as i64 as f64,
                _ => *v as f64,
            },
            Value::Float(v) => *v as f64,
            Value::Double(v) => *v,
            Value::Boolean(b) => f64::from(u8::from(*b)),
            Value::String(_) | Value::Bytes(_) => return None,
        })
    }

    /// The value as text (string and text metrics).
    pub fn text(&self) -> Option<&str> {
        match self.value.as_ref()? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}
