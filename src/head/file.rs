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

/// A head as read from its file: where it came from, the checksum of the file's bytes (what
/// the service's health, logs and reloads name a head by) and the bytes themselves (what a
/// service keeps of the head it runs, to roll back to it whatever the file on disk became).
#[derive(Debug, Clone)]
pub struct HeadFile {
    pub head: Head,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: Vec<u8>,
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
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| fail("not an edge-mnv2 head file (not text)".into()))?;
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
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
        || p.novelty
            .as_ref()
            .is_some_and(|n| n.per_class.len() != c || n.dim() != d)
    {
        return Err(inconsistent());
    }
    check_values(&p).map_err(fail)?;
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
    Ok(HeadFile {
        head,
        path,
        sha256,
        bytes,
    })
}

/// What the arrays mean, beyond their sizes: every value finite (one NaN or infinity makes every
/// probability NaN, which results print as `null`), the standard deviations and the temperature
/// above 0 (they divide). Names the first value that is not, as its field and flat index.
fn check_values(p: &PayloadIn) -> Result<(), String> {
    let arrays: [(&str, &[f32], bool); 4] = [
        ("mean", &p.mean, false),
        ("std", &p.std, true),
        ("weights", &p.weights, false),
        ("bias", &p.bias, false),
    ];
    for (field, values, positive) in arrays {
        if let Some(i) = values.iter().position(|&v| !acceptable(v, positive)) {
            return Err(refusal(&format!("{field}[{i}]"), values[i], positive));
        }
    }
    if !acceptable(p.temperature, true) {
        return Err(refusal("temperature", p.temperature, true));
    }
    Ok(())
}

fn acceptable(v: f32, positive: bool) -> bool {
    v.is_finite() && (!positive || v > 0.0)
}

fn refusal(field: &str, v: f32, positive: bool) -> String {
    let rule = if positive {
        "must be a number above 0"
    } else {
        "must be a finite number"
    };
    format!("{field} is {v} ({rule})")
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

    /// The version-1 head with `change` made to it, as a file whose payload then has `edit` made
    /// to its text (with the checksum recomputed): how values JSON cannot carry from a `Head`
    /// (an overflowing number) get into a file.
    fn hostile(change: impl FnOnce(&mut Head), edit: (&str, &str)) -> Result<HeadFile, HeadError> {
        let mut head = Head::parse(V1_FILE.as_bytes().to_vec(), "h".into())
            .unwrap()
            .head;
        change(&mut head);
        let text = String::from_utf8(head.to_file_bytes().unwrap()).unwrap();
        let payload = text
            .split_once('\n')
            .unwrap()
            .1
            .trim_end()
            .replace(edit.0, edit.1);
        let header = format!(
            r#"{{"format":"edge-mnv2-head","version":2,"payload_sha256":"{}"}}"#,
            hex::encode(Sha256::digest(payload.as_bytes()))
        );
        Head::parse(
            format!("{header}\n{payload}\n").into_bytes(),
            "b/head.json".into(),
        )
    }

    #[test]
    fn values_that_break_every_answer_are_refused_by_field() {
        let refused = |change: fn(&mut Head), edit| hostile(change, edit).unwrap_err().to_string();
        let none = ("", "");
        assert_eq!(
            refused(|h| h.dense.std[1] = 0.0, none),
            "b/head.json: std[1] is 0 (must be a number above 0)"
        );
        assert_eq!(
            refused(|h| h.dense.std.fill(0.0), none),
            "b/head.json: std[0] is 0 (must be a number above 0)"
        );
        assert_eq!(
            refused(|h| h.dense.std[0] = -1.0, none),
            "b/head.json: std[0] is -1 (must be a number above 0)"
        );
        assert_eq!(
            refused(|h| h.temperature = 0.0, none),
            "b/head.json: temperature is 0 (must be a number above 0)"
        );
        // f32 overflows to infinity as it is read; a NaN has no JSON spelling (see below).
        assert_eq!(
            refused(|h| h.dense.weights[[1, 0]] = 7.25, ("7.25", "1e39")),
            "b/head.json: weights[2] is inf (must be a finite number)"
        );
        assert_eq!(
            refused(|h| h.dense.mean[1] = 7.25, ("7.25", "-1e39")),
            "b/head.json: mean[1] is -inf (must be a finite number)"
        );
        assert_eq!(
            refused(|h| h.dense.bias[1] = 7.25, ("7.25", "1e39")),
            "b/head.json: bias[1] is inf (must be a finite number)"
        );
        // Sizes are still checked (and named) as before.
        assert!(refused(|h| h.dense.bias[1] = 7.25, ("7.25", "1,2"))
            .ends_with("inconsistent head file (array sizes do not match)"));
        assert!(hostile(|_| {}, none).is_ok());

        let payload = V1_FILE.split_once('\n').unwrap().1.trim_end();
        let mut p: PayloadIn = serde_json::from_str(payload).unwrap();
        p.weights[3] = f32::NAN;
        assert_eq!(
            check_values(&p).unwrap_err(),
            "weights[3] is NaN (must be a finite number)"
        );
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
