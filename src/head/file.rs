//! The head file: a header line (format, version, the payload's sha256), then the head as one line
//! of JSON, its dense layer's arrays written flat. The bytes are part of the contract: the same
//! training gives the same file, byte for byte, and a service names a head by its file's sha256.

use std::path::{Path, PathBuf};

use ndarray::{Array, Array1, Array2, Dimension};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::model::{BackboneRef, Dense, Head, HeadError, TrainConfig};
use crate::novelty::Novelty;
use crate::views::Views;

pub const HEAD_FORMAT: &str = "edge-mnv2-head";
/// Version 2 added the temperature, the views and the novelty model; version 1 heads still load
/// (temperature 1, one view, no novelty score).
pub const HEAD_VERSION: u32 = 2;
/// The file name of the head inside an output directory.
pub const HEAD_FILE: &str = "head.json";

/// Header line of a head file; the payload (the head as JSON) follows on the next line and
/// `payload_sha256` covers exactly its bytes.
#[derive(Debug, Serialize, Deserialize)]
struct FileHeader {
    format: String,
    version: u32,
    payload_sha256: String,
}

/// The payload as written, in the head's field order.
#[derive(Serialize)]
struct PayloadOut<'a> {
    backbone: &'a BackboneRef,
    classes: &'a [String],
    #[serde(serialize_with = "flat")]
    mean: &'a Array1<f32>,
    #[serde(serialize_with = "flat")]
    std: &'a Array1<f32>,
    /// Row-major [embedding_dim, classes].
    #[serde(serialize_with = "flat")]
    weights: &'a Array2<f32>,
    #[serde(serialize_with = "flat")]
    bias: &'a Array1<f32>,
    config: &'a TrainConfig,
    temperature: f32,
    views: Views,
    #[serde(skip_serializing_if = "Option::is_none")]
    novelty: Option<&'a Novelty>,
}

/// An array as the flat list of its elements in logical (row-major) order.
fn flat<S: Serializer, D: Dimension>(a: &&Array<f32, D>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(a.iter())
}

/// The payload as read; what version 1 lacked has its version-1 meaning. Named `Head` so that
/// serde's messages about a malformed payload read as they always have.
#[derive(Deserialize)]
#[serde(rename = "Head")]
struct PayloadIn {
    backbone: BackboneRef,
    classes: Vec<String>,
    mean: Vec<f32>,
    std: Vec<f32>,
    weights: Vec<f32>,
    bias: Vec<f32>,
    config: TrainConfig,
    #[serde(default = "one")]
    temperature: f32,
    #[serde(default)]
    views: Views,
    #[serde(default)]
    novelty: Option<Novelty>,
}

fn one() -> f32 {
    1.0
}

pub(super) fn to_bytes(head: &Head) -> anyhow::Result<Vec<u8>> {
    let d = &head.dense;
    let payload = serde_json::to_string(&PayloadOut {
        backbone: &head.backbone,
        classes: &head.classes,
        mean: &d.mean,
        std: &d.std,
        weights: &d.weights,
        bias: &d.bias,
        config: &head.config,
        temperature: head.temperature,
        views: head.views,
        novelty: head.novelty.as_ref(),
    })?;
    let header = FileHeader {
        format: HEAD_FORMAT.into(),
        version: HEAD_VERSION,
        payload_sha256: hex::encode(Sha256::digest(payload.as_bytes())),
    };
    Ok(format!("{}\n{payload}\n", serde_json::to_string(&header)?).into_bytes())
}

/// A head as read from its file: where it came from and the checksum of the file's bytes (what
/// the service's health, logs and reloads name a head by).
#[derive(Debug, Clone)]
pub struct HeadFile {
    pub head: Head,
    pub path: PathBuf,
    pub sha256: String,
}

/// The head file a `--head` argument names: the file itself, or `DIR/head.json`.
pub fn head_file_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(HEAD_FILE)
    } else {
        path.to_path_buf()
    }
}

pub(super) fn read(path: &Path) -> Result<HeadFile, HeadError> {
    let path = head_file_path(path);
    let fail = |reason: String| HeadError::File {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no such file (train one with `edge-mnv2 finetune`)".into()
            }
            _ => e.to_string(),
        })
    })?;
    parse(bytes, path)
}

pub(super) fn parse(bytes: Vec<u8>, path: PathBuf) -> Result<HeadFile, HeadError> {
    let fail = |reason: String| HeadError::File {
        path: path.display().to_string(),
        reason,
    };
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let text = String::from_utf8(bytes)
        .map_err(|_| fail("not an edge-mnv2 head file (not text)".into()))?;
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let header: FileHeader =
        serde_json::from_str(first).map_err(|_| fail("not an edge-mnv2 head file".into()))?;
    if header.format != HEAD_FORMAT {
        return Err(fail(format!(
            "not an edge-mnv2 head file (format '{}')",
            header.format
        )));
    }
    if header.version != HEAD_VERSION && header.version != 1 {
        return Err(fail(format!(
            "head file version {} is not supported by this edge-mnv2 (reads version {HEAD_VERSION})",
            header.version
        )));
    }
    let payload = rest.strip_suffix('\n').unwrap_or(rest);
    if hex::encode(Sha256::digest(payload.as_bytes())) != header.payload_sha256 {
        return Err(fail(
            "corrupt or truncated head file (checksum mismatch)".into(),
        ));
    }
    let p: PayloadIn =
        serde_json::from_str(payload).map_err(|e| fail(format!("corrupt head file: {e}")))?;
    let inconsistent = || fail("inconsistent head file (array sizes do not match)".into());
    let (d, c) = (p.mean.len(), p.classes.len());
    if p.std.len() != d
        || p.weights.len() != d * c
        || p.bias.len() != c
        || d != p.backbone.embedding_dim
        || c < 2
        || !(p.temperature.is_finite() && p.temperature > 0.0)
        || p.novelty
            .as_ref()
            .is_some_and(|n| n.per_class.len() != c || n.dim() != d)
    {
        return Err(inconsistent());
    }
    let dense = Dense {
        mean: Array1::from(p.mean),
        std: Array1::from(p.std),
        weights: Array2::from_shape_vec((d, c), p.weights).map_err(|_| inconsistent())?,
        bias: Array1::from(p.bias),
    };
    let head = Head {
        backbone: p.backbone,
        classes: p.classes,
        dense,
        config: p.config,
        temperature: p.temperature,
        views: p.views,
        novelty: p.novelty,
    };
    Ok(HeadFile { head, path, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 head file as version 1 wrote it (before the temperature, the views and the
    /// novelty model): two classes on a 2-d embedding, `right` for x > 0.
    const V1_FILE: &str = concat!(
        r#"{"format":"edge-mnv2-head","version":1,"payload_sha256":"b3085e61f92b9772999f9fe165d6e171cad76d5e262870b175db43c94c90260f"}"#,
        "\n",
        r#"{"backbone":{"name":"mobilenet_v2_1.0_224_quant","sha256":"7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776","embedding_dim":2,"input":{"layout":"nhwc","dtype":"u8","size":224,"mean":null,"std":null},"preprocessing":"decode+exif, rgb8, stretch-resize triangle; augment affine-reflect v1"},"classes":["left","right"],"mean":[0.0,0.0],"std":[1.0,1.0],"weights":[-2.0,2.0,0.0,0.0],"bias":[0.5,-0.5],"config":{"epochs":100,"patience":10,"lr":0.001,"batch_size":32,"weight_decay":0.0001,"class_weighting":true,"standardize":true,"seed":0}}"#,
        "\n"
    );

    #[test]
    fn a_version_1_head_still_reads_with_its_version_1_meaning() {
        let file = Head::parse(V1_FILE.as_bytes().to_vec(), "old/head.json".into())
            .unwrap_or_else(|e| panic!("{e}"));
        let head = file.head;
        assert_eq!(head.classes, ["left", "right"]);
        assert_eq!(head.temperature, 1.0);
        assert_eq!(head.views, Views::ONE);
        assert!(head.novelty.is_none());
        assert_eq!(head.dense.weights.dim(), (2, 2));
        assert_eq!(head.dense.weights[[0, 0]], -2.0);
        assert_eq!(head.dense.bias.to_vec(), [0.5, -0.5]);
        let p = head.predict(&[3.0, 1.0]);
        assert!(p[1] > 0.99, "{p:?}");
        assert_eq!(file.sha256, hex::encode(Sha256::digest(V1_FILE.as_bytes())));

        // Written back, it is a version-2 file with the same arrays, flat as before.
        let text = String::from_utf8(head.to_file_bytes().unwrap()).unwrap();
        assert!(
            text.starts_with(r#"{"format":"edge-mnv2-head","version":2,"#),
            "{text}"
        );
        assert!(text.contains(r#""mean":[0.0,0.0],"std":[1.0,1.0],"weights":[-2.0,2.0,0.0,0.0],"bias":[0.5,-0.5],"config":"#), "{text}");
        assert!(
            text.ends_with("\"temperature\":1.0,\"views\":1}\n"),
            "{text}"
        );
        let back = Head::parse(text.into_bytes(), "new/head.json".into())
            .unwrap()
            .head;
        assert_eq!(back.dense, head.dense);
    }

    #[test]
    fn a_damaged_file_is_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(HEAD_FILE);
        std::fs::write(&p, &V1_FILE[..V1_FILE.len() - 40]).unwrap();
        let e = Head::load(d.path()).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        std::fs::write(&p, "hello\n").unwrap();
        assert!(Head::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not an edge-mnv2 head file"));
        let three = V1_FILE.replace(r#""version":1"#, r#""version":3"#);
        let e = Head::parse(three.into_bytes(), p.clone()).unwrap_err();
        assert!(e.to_string().contains("version 3 is not supported"), "{e}");
    }
}
