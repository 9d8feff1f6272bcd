//! A trained head on its backbone: image in, label out. What `predict`, `evaluate` and the
//! service run for every image or frame.

use std::collections::BTreeMap;

use image::RgbImage;
use serde::Serialize;
use thiserror::Error;

use crate::backbone::{Backbone, BackboneError, EMBEDDING_DIM};
use crate::head::{argmax, BackboneRef, Head};
use crate::preprocess::{PREPROCESS_ACCEPTED, PREPROCESS_VERSION};

#[derive(Debug, Error)]
pub enum MismatchError {
    #[error("head was trained on backbone '{head_name}' (sha256 {head_sha}…) but the model in use is '{model_name}' (sha256 {model_sha}…); use the same --model as for finetune, or retrain")]
    Backbone {
        head_name: String,
        head_sha: String,
        model_name: String,
        model_sha: String,
    },
    #[error(
        "head was trained with different preprocessing ('{0}'); retrain it with this edge-mnv2"
    )]
    Preprocessing(String),
}

/// What the head records about the backbone it is trained on.
pub fn backbone_ref(backbone: &Backbone) -> BackboneRef {
    BackboneRef {
        name: backbone.name().to_string(),
        sha256: backbone.sha256().to_string(),
        embedding_dim: EMBEDDING_DIM,
        input: backbone.spec().input.clone(),
        preprocessing: PREPROCESS_VERSION.to_string(),
    }
}

/// Refuses a head trained on another backbone file or with other preprocessing.
pub fn check_compatible(head: &Head, backbone: &Backbone) -> Result<(), MismatchError> {
    let b = &head.backbone;
    if b.sha256 != backbone.sha256() {
        return Err(MismatchError::Backbone {
            head_name: b.name.clone(),
            head_sha: b.sha256.chars().take(12).collect(),
            model_name: backbone.name().to_string(),
            model_sha: backbone.sha256().chars().take(12).collect(),
        });
    }
    if !PREPROCESS_ACCEPTED.contains(&b.preprocessing.as_str()) || b.input != backbone.spec().input
    {
        return Err(MismatchError::Preprocessing(b.preprocessing.clone()));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub confidence: f32,
    pub probs: Vec<f32>,
}

impl Prediction {
    /// Each class's probability by class name, in name order (as every JSON output lists them).
    pub fn probs_by_class<T>(
        &self,
        classes: &[String],
        value: impl Fn(f32) -> T,
    ) -> BTreeMap<String, T> {
        classes
            .iter()
            .zip(&self.probs)
            .map(|(class, &p)| (class.clone(), value(p)))
            .collect()
    }

    pub fn from_probs(head: &Head, probs: Vec<f32>) -> Prediction {
        let index = argmax(&probs);
        Prediction {
            label: head.classes[index].clone(),
            index,
            confidence: probs[index],
            probs,
        }
    }
}

pub struct Classifier {
    pub backbone: Backbone,
    pub head: Head,
}

impl Classifier {
    pub fn new(backbone: Backbone, head: Head) -> Result<Classifier, MismatchError> {
        check_compatible(&head, &backbone)?;
        Ok(Classifier { backbone, head })
    }

    pub fn predict(&self, img: &RgbImage) -> Result<Prediction, BackboneError> {
        let embedding = self.backbone.embed(img)?;
        Ok(Prediction::from_probs(
            &self.head,
            self.head.predict(&embedding),
        ))
    }
}
