//! TensorBoard event files of a run, made from its scalars ([`super::scalars_of`]): the TFRecord
//! framing (length, masked CRC-32C, payload) around `tensorflow.Event` protobufs holding scalar
//! summaries. The worker writes one beside `metrics.jsonl`; `idcctl tensorboard` gathers them
//! (and makes them for runs that predate them). The file is a function of the records, so
//! rewriting it after a resume never duplicates a point.

use crate::metrics::{AnyReport, MetricsRecord};

/// The file_version every event file starts with.
const FILE_VERSION: &str = "brain.Event:2";

/// TFRecord's masked CRC: rotated and offset, so that a CRC of data holding CRCs stays strong.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the payload, its masked CRC (little-endian).
pub fn record(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `tensorflow.Event` with `wall_time` (1, double), `step` (2, int64) and either
/// `file_version` (3) or a `Summary` (5) of `simple_value` scalars (value 1: tag 1, simple_value 2).
fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(String, f32)],
) -> Vec<u8> {
    let mut e = Vec::with_capacity(32 + scalars.len() * 32);
    varint((1 << 3) | 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut e);
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = vec![];
        for (tag, value) in scalars {
            let mut v = vec![];
            bytes_field(1, tag.as_bytes(), &mut v);
            varint((2 << 3) | 5, &mut v);
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(1, &v, &mut summary);
        }
        bytes_field(5, &summary, &mut e);
    }
    e
}

/// The event file of a run that started at `started_unix` (seconds): every scalar of
/// [`super::scalars_of`], one event per step of each kind, at the start plus its elapsed time.
pub fn events_of(
    records: &[MetricsRecord],
    report: Option<&AnyReport>,
    started_unix: f64,
) -> Vec<u8> {
    let scalars = super::scalars_of(records, report);
    let mut out = Vec::with_capacity(64 + scalars.len() * 40);
    record(&event(started_unix, 0, Some(FILE_VERSION), &[]), &mut out);
    // Scalars of one record share a step and a time: one event holds them.
    let mut i = 0;
    while i < scalars.len() {
        let (step, elapsed) = (scalars[i].step, scalars[i].elapsed_s);
        let mut values = vec![];
        while i < scalars.len() && scalars[i].step == step && scalars[i].elapsed_s == elapsed {
            values.push((scalars[i].tag.clone(), scalars[i].value as f32));
            i += 1;
        }
        record(
            &event(started_unix + elapsed, step, None, &values),
            &mut out,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crcs_match_tfrecords() {
        // The CRC-32C check value (RFC 3720, B.4), masked as TFRecord masks it.
        assert_eq!(
            masked_crc(b"123456789"),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
        assert_eq!(masked_crc(b""), 0xa282_ead8);
    }

    #[test]
    fn records_are_framed_with_masked_crcs() {
        let mut out = vec![];
        record(b"abc", &mut out);
        assert_eq!(out.len(), 8 + 4 + 3 + 4);
        assert_eq!(&out[..8], &3u64.to_le_bytes());
        assert_eq!(&out[8..12], &masked_crc(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&out[12..15], b"abc");
        assert_eq!(
            u32::from_le_bytes(out[15..].try_into().unwrap()),
            0x364B_3FB7u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn varints_and_events_encode_as_protobuf() {
        let mut v = vec![];
        varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
        let e = event(1.5, 7, None, &[("a".into(), 2.0)]);
        // wall_time (fixed64), step (varint 7), summary { value { tag "a", simple_value 2.0 } }.
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 7, 0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15]);
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(e, want);
    }

    mod stored {
        use super::*;
        use crate::fuzz::{bytes, config};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(config(256))]

            /// Whatever metrics.jsonl and report.json hold, their event file is written.
            #[test]
            fn any_stored_records_make_events(a in bytes(256), b in bytes(256)) {
                let records = crate::metrics::parse_jsonl(&a);
                let report = serde_json::from_slice::<AnyReport>(&b).ok();
                events_of(&records, report.as_ref(), 1.7e9);
            }
        }
    }
}
