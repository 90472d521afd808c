//! Loading a staged dataset into tensors: every shard read once, checksum verified, the uint8
//! images (of the dataset's shape) kept on the training device (batches are gathered there;
//! nothing is decoded).

use crate::error::WorkerError;
use idc::dataset::manifest::DatasetManifest;
use idc::dataset::split::Split;
use idc::shard::{RecordMeta, Shape, ShardReader};
use idc::store::Store;
use tch::{Device, Kind, Tensor};

/// One split on the device.
pub struct SplitData {
    /// `[N, C, H, W]` uint8.
    pub images: Tensor,
    /// `[N]` int64 class labels (IDC: 0 no IDC, 1 IDC).
    pub labels: Tensor,
    /// The labels on the host, for sampling and metrics.
    pub labels_host: Vec<u8>,
    /// Where each record came from (empty for splits not read from shards).
    pub origins: Vec<Origin>,
}

/// Where one record of a split is in the staged dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Index of its shard in the manifest's shard list.
    pub shard: u32,
    /// Index of the record in that shard.
    pub record: u32,
    pub meta: RecordMeta,
}

impl SplitData {
    pub fn len(&self) -> usize {
        self.labels_host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels_host.is_empty()
    }

    /// Builds a split from HWC uint8 pixels (`n` images of `shape`) and labels.
    pub fn from_hwc(pixels: &[u8], labels: Vec<u8>, shape: Shape, device: Device) -> Self {
        let n = labels.len() as i64;
        let images = Tensor::from_slice(pixels)
            .view([
                n,
                shape.height as i64,
                shape.width as i64,
                shape.channels as i64,
            ])
            .permute([0, 3, 1, 2])
            .contiguous()
            .to_device(device);
        let labels_t = Tensor::from_slice(&labels)
            .to_kind(Kind::Int64)
            .to_device(device);
        Self {
            images,
            labels: labels_t,
            labels_host: labels,
            origins: vec![],
        }
    }
}

/// A staged dataset, loaded.
pub struct Dataset {
    pub manifest: DatasetManifest,
    pub train: SplitData,
    pub val: SplitData,
    pub test: SplitData,
}

/// Reads the manifest and every shard of the dataset at `store`.
pub async fn load(store: &Store, device: Device) -> Result<Dataset, WorkerError> {
    let manifest = idc::dataset::manifest::read(store)
        .await
        .map_err(|e| WorkerError::BadInput(format!("dataset: {e}")))?
        .ok_or_else(|| {
            WorkerError::BadInput(format!(
                "no staged dataset at {} (no manifest.json)",
                store.url()
            ))
        })?;
    let layout = manifest.layout();
    let mut splits = vec![];
    for split in Split::ALL {
        let records = manifest.splits.get(&split).map(|s| s.records).unwrap_or(0) as usize;
        let mut pixels = Vec::with_capacity(records * layout.shape.pixel_bytes());
        let mut labels = Vec::with_capacity(records);
        let mut origins = Vec::with_capacity(records);
        for (shard_index, info) in manifest
            .shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.split == split)
        {
            let bytes = store.get(&info.key).await?;
            let shard = ShardReader::open_verified(bytes, &info.sha256).map_err(|e| {
                WorkerError::BadInput(format!(
                    "shard {}: {e}; restage the dataset",
                    store.url_of(&info.key)
                ))
            })?;
            if shard.split() != split
                || shard.len() as u64 != info.records
                || shard.layout() != layout
            {
                return Err(WorkerError::BadInput(format!(
                    "shard {} does not match the manifest (split, record count, image shape or classes); restage the dataset",
                    store.url_of(&info.key)
                )));
            }
            for (i, r) in shard.records().enumerate() {
                pixels.extend_from_slice(r.pixels);
                labels.push(r.meta.label);
                origins.push(Origin {
                    shard: shard_index as u32,
                    record: i as u32,
                    meta: r.meta,
                });
            }
        }
        let mut data = SplitData::from_hwc(&pixels, labels, layout.shape, device);
        data.origins = origins;
        splits.push(data);
    }
    let test = splits.pop().expect("three splits");
    let val = splits.pop().expect("three splits");
    let train = splits.pop().expect("three splits");
    for (name, s) in [("train", &train), ("val", &val), ("test", &test)] {
        if s.is_empty() {
            return Err(WorkerError::BadInput(format!(
                "the {name} split of {} is empty; restage with other split options",
                store.url()
            )));
        }
    }
    Ok(Dataset {
        manifest,
        train,
        val,
        test,
    })
}
