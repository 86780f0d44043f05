//! Image folders: `root/<class>/*.{png,jpg,jpeg}`, optionally split as `root/train/<class>` and
//! `root/test/<class>` (or `root/val/<class>`). Classes are the sorted folder names; images are
//! resized to `size`x`size` on load.

use std::path::{Path, PathBuf};

use crate::synthetic::mix;
use crate::{DataError, ImageDataset};

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Lists `(file, class index)` under `dir/<class>/`, and the class names.
/// Image files with their class index, and the class names.
type Listing = (Vec<(PathBuf, usize)>, Vec<String>);

fn scan(dir: &Path) -> Result<Listing, DataError> {
    let class_dirs: Vec<PathBuf> = read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if class_dirs.is_empty() {
        return Err(DataError::format(
            dir,
            "no class folders found; expected <root>/<class>/*.png|jpg (or <root>/train/<class>/...)",
        ));
    }
    let mut files = Vec::new();
    let mut classes = Vec::new();
    for (label, cdir) in class_dirs.iter().enumerate() {
        classes.push(
            cdir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for f in read_dir_sorted(cdir)?.into_iter().filter(|p| is_image(p)) {
            files.push((f, label));
        }
    }
    if files.is_empty() {
        return Err(DataError::format(
            dir,
            "class folders contain no .png/.jpg images",
        ));
    }
    Ok((files, classes))
}

fn decode(
    files: &[(PathBuf, usize)],
    classes: Vec<String>,
    size: usize,
    name: String,
) -> Result<ImageDataset, DataError> {
    let plane = size * size;
    let mut pixels = Vec::with_capacity(files.len() * 3 * plane);
    let mut labels = Vec::with_capacity(files.len());
    for (path, label) in files {
        let img = image::open(path)
            .map_err(|e| DataError::format(path, format!("cannot decode image: {e}")))?
            .resize_exact(
                size as u32,
                size as u32,
                image::imageops::FilterType::Triangle,
            )
            .to_rgb8();
        // HWC interleaved -> CHW planar, the layout the rest of the pipeline uses.
        let raw = img.as_raw();
        for c in 0..3 {
            pixels.extend((0..plane).map(|p| raw[p * 3 + c]));
        }
        labels.push(*label as u16);
    }
    Ok(ImageDataset {
        name,
        pixels,
        labels,
        height: size,
        width: size,
        classes,
    })
}

/// Loads the train or test split of an image folder.
///
/// Without `train/` and `test/` (or `val/`) subfolders, every 10th image by a hash of its file name
/// is held out as the test split, so the split is stable when files are added.
pub fn load_folder(
    root: &Path,
    train: bool,
    size: usize,
    limit: Option<usize>,
) -> Result<ImageDataset, DataError> {
    if !root.is_dir() {
        return Err(DataError::Missing {
            message: format!(
                "image folder {} does not exist (expected <root>/<class>/*.png|jpg)",
                root.display()
            ),
        });
    }
    let split_dir = if train {
        Some(root.join("train")).filter(|p| p.is_dir())
    } else {
        [root.join("test"), root.join("val")]
            .into_iter()
            .find(|p| p.is_dir())
    };
    let name = format!("folder/{}", if train { "train" } else { "test" });
    let (mut files, classes) = match split_dir {
        Some(d) => scan(&d)?,
        None => {
            let (files, classes) = scan(root)?;
            let held_out = |p: &Path| {
                let h = p
                    .file_name()
                    .map(|n| {
                        n.to_string_lossy()
                            .bytes()
                            .fold(0u64, |a, b| mix(a ^ b as u64))
                    })
                    .unwrap_or(0);
                h.is_multiple_of(10)
            };
            (
                files
                    .into_iter()
                    .filter(|(p, _)| held_out(p) != train)
                    .collect(),
                classes,
            )
        }
    };
    if let Some(l) = limit {
        files.truncate(l);
    }
    decode(&files, classes, size, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_classes_resizes_and_reports_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (class, colour) in [("cats", [255u8, 0, 0]), ("dogs", [0, 0, 255])] {
            for split in ["train", "test"] {
                let d = dir.path().join(split).join(class);
                std::fs::create_dir_all(&d).expect("mkdir");
                let img = image::RgbImage::from_pixel(10, 6, image::Rgb(colour));
                img.save(d.join("a.png")).expect("save");
            }
        }
        let ds = load_folder(dir.path(), true, 8, None).expect("load");
        assert_eq!(ds.classes, vec!["cats", "dogs"]);
        assert_eq!(ds.labels, vec![0, 1]);
        assert_eq!(ds.image(0)[0], 255); // red plane of the cat
        assert_eq!(ds.image(1)[2 * 64], 255); // blue plane of the dog
        std::fs::write(dir.path().join("test/dogs/broken.jpg"), b"not a jpeg").expect("write");
        let e = load_folder(dir.path(), false, 8, None)
            .expect_err("broken")
            .to_string();
        assert!(
            e.contains("broken.jpg") && e.contains("cannot decode"),
            "{e}"
        );
    }
}
