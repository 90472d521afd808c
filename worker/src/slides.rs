//! `idc-worker predict-slides`: a run's model over whole-slide images. For each slide of its
//! index of the job: the resolution and the level at the training scale, a tissue mask from a
//! thumbnail, then the tissue's patches read (by reader threads, never a whole level) and
//! scored in batches as they come; it writes the slide's WSInfer-style CSV, GeoJSON regions,
//! heat map, thumbnail, mask and, last, its summary. A slide that fails ends with its reason in
//! its summary and the others go on.

use crate::error::WorkerError;
use crate::model::Model;
use crate::predict::{batch_probabilities, load_model};
use crate::runlog::RunLog;
use crate::train::device_for;
use bytes::Bytes;
use idc::exit::{ExitCode, ProcessExitCode};
use idc::layout::run::prediction as keys;
use idc::slide::grid::{Grid, resample_rgb};
use idc::slide::job::{self, SlideInput, SlideJob};
use idc::slide::openslide::Slide;
use idc::slide::outputs::{self, PatchRow, SlideStatus, SlideSummary, Timings, files};
use idc::slide::scale::{self, Plan};
use idc::slide::tissue::{TissueOptions, tissue_mask};
use idc::slide::{Image, regions};
use idc::store::Store;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// The longest side of a slide's thumbnail (the tissue mask and the heat map are drawn on it):
/// about [`THUMB_PATCH`] pixels a patch, within these bounds.
const THUMBNAIL: (f64, f64) = (512.0, 2048.0);
/// Thumbnail pixels across a patch: enough for the mask to tell a patch's tissue fraction.
const THUMB_PATCH: f64 = 8.0;
/// Patches read by one region read: a run of neighbours in a row.
const RUN: usize = 32;
/// The set-up environment variable Kubernetes gives each pod of an Indexed Job.
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// Runs the slides of `index` (else of `$JOB_COMPLETION_INDEX`, else all) of the slide job at
/// `job_url`. Exit code: success when every slide succeeded, else the worst slide's.
pub fn run(job_url: &str, index: Option<u32>) -> Result<ExitCode, WorkerError> {
    let rt =
        tokio::runtime::Runtime::new().map_err(WorkerError::io("starting the async runtime"))?;
    let job = Store::open(job_url)?;
    let text = rt.block_on(job.get(keys::SPEC))?;
    let spec: SlideJob = serde_json::from_slice(&text)
        .map_err(|e| WorkerError::BadInput(format!("{}: {e}", job.url_of(keys::SPEC))))?;
    let index =
        match index {
            Some(i) => Some(i),
            None => match std::env::var(INDEX_ENV) {
                Ok(v) => Some(v.parse().map_err(|_| {
                    WorkerError::BadInput(format!("{INDEX_ENV}={v} is not an index"))
                })?),
                Err(_) => None,
            },
        };
    let log = RunLog::at(&index.map_or(keys::LOG.to_string(), keys::index_log));
    let result = run_slides(&rt, &job, &spec, index, &log);
    if let Err(e) = &result {
        log.line(&format!("error: {e}"));
    }
    if let Err(e) = rt.block_on(log.flush(&job)) {
        eprintln!("warning: could not write the log to the bucket: {e}");
    }
    result
}

fn run_slides(
    rt: &tokio::runtime::Runtime,
    job: &Store,
    spec: &SlideJob,
    index: Option<u32>,
    log: &RunLog,
) -> Result<ExitCode, WorkerError> {
    crate::shim::require_ops()?;
    let p = &spec.predict;
    let device = device_for(p.device, "--device")?;
    let mine: Vec<&SlideInput> = match index {
        Some(i) => spec.slides_of(i).map(|(_, s)| s).collect(),
        None => spec.slides.iter().collect(),
    };
    log.line(&format!(
        "slide prediction {} with run {} ({}, {}) on {device:?}: {} slide(s){}, {} um/px, {}-pixel patches every {} pixels",
        p.prediction_id,
        p.run_id,
        p.model.name(),
        p.checkpoint,
        mine.len(),
        index.map_or(String::new(), |i| format!(" of index {i}")),
        spec.target_mpp,
        p.shape.width,
        spec.stride
    ));
    let model = load_model(rt, p, device)?;
    let mut worst = ExitCode::Success;
    for slide in mine {
        let done_key = keys::slide_output(&slide.name, files::SUMMARY);
        if let Some(bytes) = rt.block_on(job.get_opt(&done_key))?
            && serde_json::from_slice::<SlideSummary>(&bytes)
                .is_ok_and(|s| s.status == SlideStatus::Succeeded)
        {
            // A retry keeps what an earlier attempt finished.
            log.line(&job::finished_line(&slide.name, "done before (kept)"));
            continue;
        }
        let started = Instant::now();
        let summary = match predict_slide(rt, job, spec, slide, &model, device, log) {
            Ok(s) => s,
            Err(e) => {
                let code = e.process_exit_code();
                if code as u8 > worst as u8 {
                    worst = code;
                }
                let mut s = SlideSummary::failed(
                    &slide.name,
                    &slide.given,
                    spec.target_mpp,
                    p.shape.width,
                    spec.stride,
                    &e.to_string(),
                );
                s.seconds.total = started.elapsed().as_secs_f64();
                s
            }
        };
        let outcome = match &summary.reason {
            None => format!(
                "{} tissue patches, {:.1}% IDC, {:.1}s",
                summary.patches_tissue,
                100.0 * summary.idc_fraction,
                summary.seconds.total
            ),
            Some(reason) => format!("failed: {reason}"),
        };
        // Last: its presence says the slide is done.
        put_json(rt, job, &done_key, &summary)?;
        log.line(&job::finished_line(&slide.name, &outcome));
        rt.block_on(log.flush(job))?;
    }
    Ok(worst)
}

fn put_json<T: serde::Serialize>(
    rt: &tokio::runtime::Runtime,
    job: &Store,
    key: &str,
    value: &T,
) -> Result<(), WorkerError> {
    let bytes = serde_json::to_vec_pretty(value).expect("serializes");
    Ok(rt.block_on(job.put(key, Bytes::from(bytes)))?)
}

/// A slide file on this machine: the source itself, or a download removed when dropped.
struct LocalSlide {
    path: std::path::PathBuf,
    _download: Option<tempfile::TempDir>,
}

fn local_copy(rt: &tokio::runtime::Runtime, source: &str) -> Result<LocalSlide, WorkerError> {
    if !source.contains("://") {
        return Ok(LocalSlide {
            path: source.into(),
            _download: None,
        });
    }
    let (store, name) = Store::open_object(source)?;
    if let Some(path) = store.local_path(&name) {
        return Ok(LocalSlide {
            path,
            _download: None,
        });
    }
    // OpenSlide reads files: an object in a bucket is copied here first.
    let dir = tempfile::tempdir().map_err(WorkerError::io("making a folder for a slide"))?;
    let path = dir.path().join(&name);
    rt.block_on(store.download(&name, &path))?;
    Ok(LocalSlide {
        path,
        _download: Some(dir),
    })
}

fn bad(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::BadInput(e.to_string())
}

/// Predicts one slide and writes its outputs but the summary, which it returns.
fn predict_slide(
    rt: &tokio::runtime::Runtime,
    job: &Store,
    spec: &SlideJob,
    input: &SlideInput,
    model: &Model,
    device: Device,
    log: &RunLog,
) -> Result<SlideSummary, WorkerError> {
    let p = &spec.predict;
    let t0 = Instant::now();
    let local = local_copy(rt, &input.source)?;
    let slide = Slide::open(&local.path).map_err(bad)?;
    let res = scale::resolution(&slide, spec.slide_mpp).map_err(bad)?;
    let plan = scale::plan(slide.levels(), &res, spec.target_mpp);
    let l0 = slide.levels()[0];
    let vendor = slide.property("openslide.vendor");
    let open_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let grid = Grid::new(
        (l0.width, l0.height),
        p.shape.width,
        spec.stride,
        plan.zoom0,
    );
    let thumb = thumbnail(&slide, grid.size0.0.min(grid.size0.1) / THUMB_PATCH)?;
    let mask = tissue_mask(&thumb, &TissueOptions::default());
    let cells = grid.tissue_patches(&mask, spec.min_tissue);
    let tissue_s = t1.elapsed().as_secs_f64();
    if cells.is_empty() {
        return Err(bad(format!(
            "no tissue found: the mask of its {}x{} thumbnail holds no {}-pixel patch at least {:.0}% tissue (is it blank, or a label image?)",
            thumb.width,
            thumb.height,
            p.shape.width,
            100.0 * spec.min_tissue
        )));
    }
    log.line(&format!(
        "slide {}: {} ({}), {}x{} at {:.3} um/px ({}), level {} at {:.3} um/px, {} tissue patches",
        input.name,
        input.given,
        vendor.as_deref().unwrap_or("unknown vendor"),
        l0.width,
        l0.height,
        res.mpp(),
        res.source,
        plan.level,
        plan.level_mpp,
        cells.len()
    ));

    let t2 = Instant::now();
    let probs = score(&slide, &plan, &grid, &cells, p, model, device, &input.name)?;
    let patches_s = t2.elapsed().as_secs_f64();

    let t3 = Instant::now();
    let k = p.classes.len();
    let rows: Vec<PatchRow> = cells
        .iter()
        .zip(crate::train::class_rows(&probs, k))
        .map(|(&(c, r), probabilities)| {
            let (minx, miny) = grid.origin0(c, r);
            PatchRow {
                minx,
                miny,
                width: grid.size0.0.round() as u64,
                height: grid.size0.1.round() as u64,
                probabilities,
            }
        })
        .collect();
    let positive_of = |row: &PatchRow| row.probabilities[1] as f64 >= p.threshold;
    let mut positive = vec![false; (grid.cols * grid.rows) as usize];
    let mut values = vec![None; positive.len()];
    for (&(c, r), row) in cells.iter().zip(&rows) {
        let i = (r * grid.cols + c) as usize;
        positive[i] = positive_of(row);
        values[i] = Some(row.probabilities[1]);
    }
    let cell_mm2 = grid.step0.0 * grid.step0.1 * res.mpp_x * res.mpp_y / 1e6;
    let polys = regions::polygons(grid.cols, grid.rows, &positive);
    let geojson = regions::feature_collection(
        &polys,
        grid.step0.0,
        grid.step0.1,
        (0.0, 0.0),
        &p.classes[1],
        [230, 40, 40],
        |poly| {
            let mut m = serde_json::Map::new();
            m.insert(
                "area_mm2".into(),
                serde_json::json!(poly.cells as f64 * cell_mm2),
            );
            m.insert("patches".into(), serde_json::json!(poly.cells));
            m
        },
    );
    let sx = thumb.width as f64 / l0.width as f64;
    let sy = thumb.height as f64 / l0.height as f64;
    let heat = outputs::heatmap(
        &thumb,
        grid.cols,
        grid.rows,
        &values,
        (0.0, 0.0, grid.step0.0 * sx, grid.step0.1 * sy),
    );
    let put = |file: &str, bytes: Vec<u8>| {
        rt.block_on(job.put(&keys::slide_output(&input.name, file), Bytes::from(bytes)))
    };
    put(files::CSV, outputs::wsinfer_csv(&rows, &p.classes))?;
    put(
        files::GEOJSON,
        serde_json::to_vec(&geojson).expect("serializes"),
    )?;
    put(files::HEATMAP, heat.to_png())?;
    put(files::THUMBNAIL, thumb.to_png())?;
    put(files::TISSUE, mask.to_png())?;
    let outputs_s = t3.elapsed().as_secs_f64();

    let n_pos = positive.iter().filter(|&&b| b).count() as u64;
    let thumb_px_mm2 = (res.mpp_x / sx) * (res.mpp_y / sy) / 1e6;
    let total = t0.elapsed().as_secs_f64();
    Ok(SlideSummary {
        slide: input.name.clone(),
        source: input.given.clone(),
        status: SlideStatus::Succeeded,
        reason: None,
        vendor,
        level0_width: Some(l0.width),
        level0_height: Some(l0.height),
        slide_mpp: Some(res.mpp()),
        mpp_source: Some(res.source.clone()),
        level: Some(plan.level as u32),
        level_mpp: Some(plan.level_mpp),
        target_mpp: spec.target_mpp,
        patch_size: p.shape.width,
        stride: spec.stride,
        patches_tissue: cells.len() as u64,
        patches_positive: n_pos,
        tissue_mm2: mask.count() as f64 * thumb_px_mm2,
        idc_mm2: n_pos as f64 * cell_mm2,
        idc_fraction: n_pos as f64 / cells.len() as f64,
        regions: polys.len() as u64,
        threshold: p.threshold,
        seconds: Timings {
            open: open_s,
            tissue: tissue_s,
            patches: patches_s,
            outputs: outputs_s,
            total,
        },
        patches_per_s: cells.len() as f64 / patches_s.max(1e-9),
        device: format!("{device:?}"),
        finished_at: idc::clock::now_rfc3339(),
    })
}

/// The slide whole, `downsample` level-0 pixels a pixel but within [`THUMBNAIL`]'s bounds on
/// its longer side: read from the level at or just finer than that, in strips of rows, and
/// averaged down.
fn thumbnail(slide: &Slide, downsample: f64) -> Result<Image, WorkerError> {
    let levels = slide.levels();
    let l0 = levels[0];
    let long = l0.width.max(l0.height) as f64;
    let factor = downsample
        .min(long / THUMBNAIL.0)
        .max(long / THUMBNAIL.1)
        .max(1.0);
    let (tw, th) = (
        ((l0.width as f64 / factor).round() as u32).max(1),
        ((l0.height as f64 / factor).round() as u32).max(1),
    );
    let (li, level) = levels
        .iter()
        .enumerate()
        .filter(|(_, l)| l.downsample <= factor * 1.01)
        .max_by(|a, b| a.1.downsample.total_cmp(&b.1.downsample))
        .map(|(i, l)| (i, *l))
        .unwrap_or((0, l0));
    // Level pixels per thumbnail row.
    let fy = level.height as f64 / th as f64;
    let mut rgb = Vec::with_capacity(tw as usize * th as usize * 3);
    // Thumbnail rows per strip: a strip of the level stays near 16 MB.
    let strip = ((16 << 20) as f64 / (level.width as f64 * 4.0 * fy)).clamp(1.0, th as f64) as u32;
    let mut ty = 0;
    while ty < th {
        let rows = strip.min(th - ty);
        let y0 = (ty as f64 * fy).floor();
        let y1 = (((ty + rows) as f64 * fy).ceil()).min(level.height as f64);
        let h = (y1 - y0).max(1.0) as u32;
        let pixels = slide
            .read_rgb(li, 0, (y0 * level.downsample) as i64, level.width as u32, h)
            .map_err(bad)?;
        resample_rgb(
            &pixels,
            level.width as usize,
            h as usize,
            (
                0.0,
                ty as f64 * fy - y0,
                level.width as f64,
                rows as f64 * fy,
            ),
            (tw as usize, rows as usize),
            &mut rgb,
        );
        ty += rows;
    }
    Ok(Image {
        width: tw,
        height: th,
        rgb,
    })
}

/// A batch of patches read: their positions among the cells and their pixels (HWC, RGB).
struct Read {
    cells: Vec<usize>,
    pixels: Vec<u8>,
}

/// The probabilities of the `cells`' patches, in their order: reader threads read runs of
/// neighbouring patches in one region read each and resample them to the model's size; this
/// thread scores them in batches as they arrive.
#[allow(clippy::too_many_arguments)]
fn score(
    slide: &Slide,
    plan: &Plan,
    grid: &Grid,
    cells: &[(u32, u32)],
    p: &idc::predictions::PredictSpec,
    model: &Model,
    device: Device,
    name: &str,
) -> Result<Vec<f32>, WorkerError> {
    let runs = runs_of(cells);
    let patch = p.shape.width as usize;
    let batch = p.batch_size.max(1) as usize;
    let outputs_per = if p.classes.len() == 2 {
        1
    } else {
        p.classes.len()
    };
    let next = AtomicUsize::new(0);
    let readers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let (tx, rx) = mpsc::sync_channel::<Result<Read, WorkerError>>(readers * 4);
    let mut probs = vec![0f32; cells.len() * outputs_per];
    let started = Instant::now();
    std::thread::scope(|s| -> Result<(), WorkerError> {
        for _ in 0..readers {
            let tx = tx.clone();
            let (runs, next) = (&runs, &next);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(run) = runs.get(i) else { break };
                    let read = read_run(slide, plan, grid, cells, run, patch);
                    let failed = read.is_err();
                    if tx.send(read).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = Read {
            cells: Vec::with_capacity(batch),
            pixels: Vec::with_capacity(batch * patch * patch * 3),
        };
        let mut done = 0u64;
        let mut last = Instant::now();
        let total = cells.len() as u64;
        let mut flush = |pending: &mut Read, done: &mut u64| {
            if pending.cells.is_empty() {
                return;
            }
            let n = pending.cells.len() as i64;
            let x = Tensor::from_slice(&pending.pixels)
                .view([n, patch as i64, patch as i64, 3])
                .permute([0, 3, 1, 2])
                .contiguous()
                .to_device(device);
            let out = tch::no_grad(|| batch_probabilities(model, &x, p.tta));
            for (j, &cell) in pending.cells.iter().enumerate() {
                probs[cell * outputs_per..(cell + 1) * outputs_per]
                    .copy_from_slice(&out[j * outputs_per..(j + 1) * outputs_per]);
            }
            *done += n as u64;
            pending.cells.clear();
            pending.pixels.clear();
        };
        for read in rx {
            let read = read?;
            let per = patch * patch * 3;
            for (j, cell) in read.cells.into_iter().enumerate() {
                pending.cells.push(cell);
                pending
                    .pixels
                    .extend_from_slice(&read.pixels[j * per..(j + 1) * per]);
                if pending.cells.len() == batch {
                    flush(&mut pending, &mut done);
                }
            }
            if last.elapsed() >= Duration::from_secs(1) {
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                eprintln!("{}", job::progress_line(name, done, total, rate));
                last = Instant::now();
            }
        }
        flush(&mut pending, &mut done);
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        eprintln!("{}", job::progress_line(name, done, total, rate));
        Ok(())
    })?;
    Ok(probs)
}

/// Runs of at most [`RUN`] neighbouring cells in one row, as ranges of `cells` (which come row
/// by row).
fn runs_of(cells: &[(u32, u32)]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=cells.len() {
        let breaks = i == cells.len()
            || cells[i].1 != cells[i - 1].1
            || cells[i].0 != cells[i - 1].0 + 1
            || i - start == RUN;
        if breaks {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

/// Reads the patches of the run of `cells` in one region of the plan's level, each resampled
/// to `patch` x `patch`.
fn read_run(
    slide: &Slide,
    plan: &Plan,
    grid: &Grid,
    cells: &[(u32, u32)],
    run: &std::ops::Range<usize>,
    patch: usize,
) -> Result<Read, WorkerError> {
    let level = slide.levels()[plan.level];
    let d = level.downsample;
    let (c0, row) = cells[run.start];
    let (c1, _) = cells[run.end - 1];
    let (x0, y0) = grid.origin0(c0, row);
    let (x1, _) = grid.origin0(c1, row);
    let w = ((x1 - x0) as f64 + grid.size0.0) / d;
    let h = grid.size0.1 / d;
    let (rw, rh) = (w.ceil() as u32 + 1, h.ceil() as u32 + 1);
    let pixels = slide
        .read_rgb(plan.level, x0 as i64, y0 as i64, rw, rh)
        .map_err(bad)?;
    let mut out = Vec::with_capacity(run.len() * patch * patch * 3);
    for &(c, _) in &cells[run.clone()] {
        let (x, _) = grid.origin0(c, row);
        let rect = ((x - x0) as f64 / d, 0.0, grid.size0.0 / d, grid.size0.1 / d);
        resample_rgb(
            &pixels,
            rw as usize,
            rh as usize,
            rect,
            (patch, patch),
            &mut out,
        );
    }
    Ok(Read {
        cells: run.clone().collect(),
        pixels: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_break_at_gaps_rows_and_length() {
        let mut cells = vec![(0, 0), (1, 0), (3, 0), (4, 1)];
        cells.extend((0..40).map(|c| (c, 2)));
        let runs = runs_of(&cells);
        assert_eq!(runs, vec![0..2, 2..3, 3..4, 4..36, 36..44]);
    }
}
