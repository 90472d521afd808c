//! A slide prediction job (`spec.json` in `runs/<id>/predictions/<prediction>/`): what
//! `idcctl predict` resolved and every worker of the job reads: the model, the training scale,
//! the patch grid's stride, the slides, and which index of the job reads which slide.

use crate::predictions::PredictSpec;
use serde::{Deserialize, Serialize};

/// Slides predicted by one call of `idcctl predict`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideJob {
    /// The model, device, batch size and threshold. Its `input` holds no shards: the slides
    /// below are the input.
    pub predict: PredictSpec,
    /// Microns per pixel the model was trained at (the dataset's `microns_per_pixel`).
    pub target_mpp: f64,
    /// Model pixels between patch origins (the patch size: no overlap).
    pub stride: u32,
    /// Microns per level-0 pixel given by the user, for every slide.
    pub slide_mpp: Option<f64>,
    /// The fraction of a patch that must be tissue for it to be scored.
    pub min_tissue: f64,
    pub slides: Vec<SlideInput>,
    /// Indexes of the job (a Kubernetes Indexed Job's completions; 1 on this machine): slide
    /// `i` is read by index `i % indexes`.
    pub indexes: u32,
}

/// One slide of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideInput {
    /// Its outputs' folder name, unique in the job.
    pub name: String,
    /// Where the worker reads it: a local path, or a `file://` or `s3://` URL.
    pub source: String,
    /// What the user gave (a path or URL), for messages.
    pub given: String,
    /// Its size in bytes when the job was made.
    pub bytes: u64,
}

impl SlideJob {
    /// The slides index `index` reads, with their positions in the job.
    pub fn slides_of(&self, index: u32) -> impl Iterator<Item = (usize, &SlideInput)> {
        let n = self.indexes.max(1) as usize;
        self.slides
            .iter()
            .enumerate()
            .filter(move |(i, _)| i % n == index as usize)
    }
}

/// The progress line a worker prints as it scores a slide's patches.
pub fn progress_line(slide: &str, done: u64, total: u64, per_s: f64) -> String {
    format!("slide {slide}: scored {done}/{total} patches ({per_s:.0} patches/s)")
}

/// (`slide`, done, total) from a [`progress_line`].
pub fn parse_progress(line: &str) -> Option<(&str, u64, u64)> {
    let rest = line.strip_prefix("slide ")?;
    let (slide, rest) = rest.split_once(": scored ")?;
    let (counts, _) = rest.split_once(" patches")?;
    let (done, total) = counts.split_once('/')?;
    Some((slide, done.parse().ok()?, total.parse().ok()?))
}

/// The line a worker prints when it has finished with a slide (succeeded or failed).
pub fn finished_line(slide: &str, outcome: &str) -> String {
    format!("slide {slide} finished: {outcome}")
}

/// (`slide`, outcome) from a [`finished_line`].
pub fn parse_finished(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix("slide ")?.split_once(" finished: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_finished_lines_parse_back() {
        let line = progress_line("tumour-1", 640, 8000, 812.4);
        assert_eq!(parse_progress(&line), Some(("tumour-1", 640, 8000)));
        let line = finished_line("a b", "failed: no tissue");
        assert_eq!(parse_finished(&line), Some(("a b", "failed: no tissue")));
        assert_eq!(parse_progress("predicted 3/4 images (1 images/s)"), None);
    }
}
