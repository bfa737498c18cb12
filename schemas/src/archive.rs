//! Object-storage formats: log archive segments and snapshots, as Arrow IPC files, and the
//! snapshot manifest. Any Arrow implementation (pyarrow, DuckDB) can read them; values stay
//! sealed exactly as in the log.
//!
//! Layout under the store's prefix:
//!
//! ```text
//! archive/p{partition:05}/{first_offset:020}-{last_offset:020}.arrow   offset, timestamp_ms, key, value
//! snapshots/{id}/secrets.arrow     mount, path, metadata (JSON, no values)
//! snapshots/{id}/values.arrow      mount, path, version, key_term, sealed
//! snapshots/{id}/control.arrow     key, value
//! snapshots/{id}/manifest.json     written last: a snapshot without it does not exist
//! ```
//! Segment names derive from offsets, so a retried upload replaces rather than duplicates.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// A file that is not what its manifest or format says.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("{file}: column `{column}` missing or of the wrong type")]
    Column { file: String, column: &'static str },
    #[error("{file}: checksum mismatch: manifest says sha256 {expected}, the file has {actual}")]
    Checksum { file: String, expected: String, actual: String },
    #[error("{file}: {rows} rows, manifest says {expected}")]
    RowCount { file: String, rows: u64, expected: u64 },
    #[error("snapshot format version {found} is not readable by this build (reads {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("manifest: {0}")]
    Manifest(String),
}

/// One archived log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Vec<u8>,
    /// The envelope bytes, exactly as in Kafka (still authenticated).
    pub value: Vec<u8>,
}

/// Object path of an archive segment.
pub fn segment_path(partition: i32, first: i64, last: i64) -> String {
    format!("archive/p{partition:05}/{first:020}-{last:020}.arrow")
}

/// Parse `(first, last)` back from a segment's file name.
pub fn parse_segment_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.rsplit('/').next()?.strip_suffix(".arrow")?;
    let (a, b) = stem.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn segment_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, false),
    ]))
}

/// Arrow IPC file bytes of one batch.
fn ipc_file(batch: &RecordBatch) -> Result<Vec<u8>, FormatError> {
    let mut w = arrow_ipc::writer::FileWriter::try_new(Vec::new(), &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    Ok(w.into_inner()?)
}

fn read_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>, FormatError> {
    let r = arrow_ipc::reader::FileReader::try_new(Cursor::new(bytes), None)?;
    Ok(r.collect::<Result<Vec<_>, _>>()?)
}

fn col<'a, T: 'static>(b: &'a RecordBatch, file: &str, name: &'static str) -> Result<&'a T, FormatError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| FormatError::Column { file: file.to_string(), column: name })
}

/// Encode an archive segment.
pub fn encode_segment(records: &[ArchivedRecord]) -> Result<Vec<u8>, FormatError> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.offset))),
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.timestamp_ms))),
        Arc::new(BinaryArray::from_iter_values(records.iter().map(|r| r.key.as_slice()))),
        Arc::new(BinaryArray::from_iter_values(records.iter().map(|r| r.value.as_slice()))),
    ];
    ipc_file(&RecordBatch::try_new(segment_schema(), cols)?)
}

/// Decode an archive segment.
pub fn decode_segment(file: &str, bytes: &[u8]) -> Result<Vec<ArchivedRecord>, FormatError> {
    let mut out = Vec::new();
    for b in read_batches(bytes)? {
        let (o, t) = (col::<Int64Array>(&b, file, "offset")?, col::<Int64Array>(&b, file, "timestamp_ms")?);
        let (k, v) = (col::<BinaryArray>(&b, file, "key")?, col::<BinaryArray>(&b, file, "value")?);
        for i in 0..b.num_rows() {
            out.push(ArchivedRecord {
                offset: o.value(i),
                timestamp_ms: t.value(i),
                key: k.value(i).to_vec(),
                value: v.value(i).to_vec(),
            });
        }
    }
    Ok(out)
}

/// The state a snapshot holds: the reader store's records, split by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotData {
    /// (mount, path, metadata JSON).
    pub secrets: Vec<(String, String, String)>,
    /// (mount, path, version, sealed value).
    pub values: Vec<(String, String, u64, Vec<u8>)>,
    /// Control records (root token hash, leader): (store key, value).
    pub control: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Position of one partition in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPosition {
    pub next_offset: i64,
    pub max_epoch: u64,
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub producer_version: String,
    pub id: String,
    pub created_ms: i64,
    /// Id of the Kafka cluster the offsets refer to (offsets of one cluster mean nothing in
    /// another: readers bootstrap only from snapshots of their own cluster).
    pub cluster: String,
    pub topic: String,
    /// Next offset per partition: the snapshot is exactly the state after everything before.
    pub partitions: BTreeMap<i32, PartitionPosition>,
    pub files: Vec<ManifestFile>,
    /// Key terms that sealed the values in it, with counts.
    pub key_terms: BTreeMap<u32, u64>,
    pub secrets: u64,
    pub values: u64,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Encode snapshot files: `(name, bytes)` plus their manifest entries and the key-term counts.
pub fn encode_snapshot(
    data: &SnapshotData,
) -> Result<(Vec<(String, Vec<u8>)>, Vec<ManifestFile>, BTreeMap<u32, u64>), FormatError> {
    let secrets = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("mount", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("metadata", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(data.secrets.iter().map(|s| s.0.as_str()))),
            Arc::new(StringArray::from_iter_values(data.secrets.iter().map(|s| s.1.as_str()))),
            Arc::new(StringArray::from_iter_values(data.secrets.iter().map(|s| s.2.as_str()))),
        ],
    )?;
    let terms: Vec<u32> =
        data.values.iter().map(|v| crate::sealed::SealedValue::decode(&v.3).map(|s| s.term).unwrap_or(0)).collect();
    let values = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("mount", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("version", DataType::UInt64, false),
            Field::new("key_term", DataType::UInt32, false),
            Field::new("sealed", DataType::Binary, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(data.values.iter().map(|v| v.0.as_str()))),
            Arc::new(StringArray::from_iter_values(data.values.iter().map(|v| v.1.as_str()))),
            Arc::new(UInt64Array::from_iter_values(data.values.iter().map(|v| v.2))),
            Arc::new(UInt32Array::from_iter_values(terms.iter().copied())),
            Arc::new(BinaryArray::from_iter_values(data.values.iter().map(|v| v.3.as_slice()))),
        ],
    )?;
    let control = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Binary, false),
            Field::new("value", DataType::Binary, false),
        ])),
        vec![
            Arc::new(BinaryArray::from_iter_values(data.control.iter().map(|c| c.0.as_slice()))),
            Arc::new(BinaryArray::from_iter_values(data.control.iter().map(|c| c.1.as_slice()))),
        ],
    )?;
    let mut files = Vec::new();
    let mut entries = Vec::new();
    for (name, batch) in [("secrets.arrow", secrets), ("values.arrow", values), ("control.arrow", control)] {
        let bytes = ipc_file(&batch)?;
        entries.push(ManifestFile {
            name: name.to_string(),
            rows: batch.num_rows() as u64,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
        files.push((name.to_string(), bytes));
    }
    let mut key_terms = BTreeMap::new();
    for t in terms {
        *key_terms.entry(t).or_insert(0) += 1;
    }
    Ok((files, entries, key_terms))
}

/// Check a snapshot file against its manifest entry: checksum first, then rows.
pub fn verify_file(entry: &ManifestFile, bytes: &[u8]) -> Result<(), FormatError> {
    let actual = sha256_hex(bytes);
    if actual != entry.sha256 {
        return Err(FormatError::Checksum { file: entry.name.clone(), expected: entry.sha256.clone(), actual });
    }
    let rows: u64 = read_batches(bytes)?.iter().map(|b| b.num_rows() as u64).sum();
    if rows != entry.rows {
        return Err(FormatError::RowCount { file: entry.name.clone(), rows, expected: entry.rows });
    }
    Ok(())
}

/// Decode verified snapshot files (by name) into [`SnapshotData`].
pub fn decode_snapshot(files: &BTreeMap<String, Vec<u8>>) -> Result<SnapshotData, FormatError> {
    let get = |n: &str| files.get(n).ok_or_else(|| FormatError::Manifest(format!("{n} missing")));
    let mut data = SnapshotData::default();
    for b in read_batches(get("secrets.arrow")?)? {
        let f = "secrets.arrow";
        let (m, p, j) = (
            col::<StringArray>(&b, f, "mount")?,
            col::<StringArray>(&b, f, "path")?,
            col::<StringArray>(&b, f, "metadata")?,
        );
        for i in 0..b.num_rows() {
            data.secrets.push((m.value(i).to_string(), p.value(i).to_string(), j.value(i).to_string()));
        }
    }
    for b in read_batches(get("values.arrow")?)? {
        let f = "values.arrow";
        let (m, p) = (col::<StringArray>(&b, f, "mount")?, col::<StringArray>(&b, f, "path")?);
        let (v, s) = (col::<UInt64Array>(&b, f, "version")?, col::<BinaryArray>(&b, f, "sealed")?);
        for i in 0..b.num_rows() {
            data.values.push((m.value(i).to_string(), p.value(i).to_string(), v.value(i), s.value(i).to_vec()));
        }
    }
    for b in read_batches(get("control.arrow")?)? {
        let f = "control.arrow";
        let (k, v) = (col::<BinaryArray>(&b, f, "key")?, col::<BinaryArray>(&b, f, "value")?);
        for i in 0..b.num_rows() {
            data.control.push((k.value(i).to_vec(), v.value(i).to_vec()));
        }
    }
    Ok(data)
}

/// Check that this build can read a manifest's format.
pub fn check_format(m: &Manifest) -> Result<(), FormatError> {
    if m.format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: m.format_version, supported: SNAPSHOT_FORMAT_VERSION });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_names_parse() {
        let recs: Vec<ArchivedRecord> = (0..5)
            .map(|i| ArchivedRecord {
                offset: 10 + i * 2,
                timestamp_ms: i,
                key: vec![i as u8],
                value: vec![0xAB; i as usize],
            })
            .collect();
        let bytes = encode_segment(&recs).unwrap();
        assert_eq!(decode_segment("s", &bytes).unwrap(), recs);
        let p = segment_path(3, 10, 18);
        assert_eq!(p, "archive/p00003/00000000000000000010-00000000000000000018.arrow");
        assert_eq!(parse_segment_name(&p), Some((10, 18)));
        assert_eq!(parse_segment_name("archive/p00003/garbage.arrow"), None);
    }

    #[test]
    fn snapshots_round_trip_and_a_flipped_byte_is_named() {
        let ring = crate::keyring::Keyring::from_root(&crate::keyring::RootKey::from_bytes([5; 32]));
        let ctx = crate::sealed::SealContext { mount: "secret", path: "a", version: 1 };
        let sealed = crate::sealed::SealedValue::seal(&ring, &ctx, b"{}").unwrap().encode();
        let data = SnapshotData {
            secrets: vec![("secret".into(), "a".into(), "{}".into())],
            values: vec![("secret".into(), "a".into(), 1, sealed)],
            control: vec![(b"c/root_token".to_vec(), vec![7; 32])],
        };
        let (files, entries, terms) = encode_snapshot(&data).unwrap();
        assert_eq!(terms, BTreeMap::from([(1, 1)]));
        for ((_, bytes), e) in files.iter().zip(&entries) {
            verify_file(e, bytes).unwrap();
        }
        let map: BTreeMap<String, Vec<u8>> = files.iter().cloned().collect();
        assert_eq!(decode_snapshot(&map).unwrap(), data);
        let mut bad = files[1].1.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        let err = verify_file(&entries[1], &bad).unwrap_err();
        assert!(err.to_string().contains("values.arrow") && err.to_string().contains(&entries[1].sha256), "{err}");
    }
}
