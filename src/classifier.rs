//! A trained head on its backbone: image in, label out. What `predict`, `evaluate` and the
//! service run for every image or frame.

use std::collections::BTreeMap;

use image::RgbImage;
use serde::Serialize;
use thiserror::Error;

use crate::backbone::{Backbone, BackboneError, EMBEDDING_DIM};
use crate::head::{BackboneRef, Head};
use crate::numeric::argmax;
use crate::preprocess::{self, PREPROCESS_ACCEPTED, PREPROCESS_VERSION};
use crate::views::{self, Views};

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
    /// How far the image is from the training images (when the head has a novelty model).
    pub novelty: Option<f32>,
    /// The novelty is above the head's threshold: the image is of none of the classes.
    pub novel: bool,
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
            novelty: None,
            novel: false,
        }
    }

    /// Adds the novelty score of the image's plain-view embedding.
    pub fn with_novelty(mut self, head: &Head, plain: &[f32]) -> Prediction {
        if let Some(n) = &head.novelty {
            let score = n.score(plain);
            self.novelty = Some(score);
            self.novel = n.is_unknown(score);
        }
        self
    }
}

/// Classifies `img` with `head`, averaging its probabilities over `views` (the head's own when
/// `None`), with the novelty score of the plain view.
pub fn classify(
    backbone: &Backbone,
    head: &Head,
    img: &RgbImage,
    views: Option<Views>,
) -> Result<Prediction, BackboneError> {
    let n = views.unwrap_or(head.views).count();
    let fitted = preprocess::fit(img, backbone.input_size());
    let embeddings = (0..n)
        .map(|v| backbone.embed(&views::view(&fitted, v)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(
        Prediction::from_probs(head, head.predict_views(&embeddings))
            .with_novelty(head, &embeddings[0]),
    )
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

    /// Classifies `img` over `views` (the head's own when `None`).
    pub fn predict(
        &self,
        img: &RgbImage,
        views: Option<Views>,
    ) -> Result<Prediction, BackboneError> {
        classify(&self.backbone, &self.head, img, views)
    }
}
