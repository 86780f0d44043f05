//! Image folders: `root/<class>/*.{png,jpg,jpeg}`, optionally split as `root/train/<class>` and
//! `root/test/<class>` (or `root/val/<class>`). Classes are the training split's sorted folder
//! names (hidden and image-less folders skipped), and a test split's folders take their labels
//! from that list by name; images are resized to `size`x`size` on load.

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

/// Image files with their class index, and the class names.
type Listing = (Vec<(PathBuf, usize)>, Vec<String>);

/// The class folders of `dir` with their images, sorted by name. Hidden folders (`.git`,
/// `.ipynb_checkpoints`) and folders without images are skipped with a warning: either would
/// otherwise become a class the data has no examples of.
fn class_folders(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>, DataError> {
    let mut out = Vec::new();
    let mut saw_dir = false;
    for cdir in read_dir_sorted(dir)?.into_iter().filter(|p| p.is_dir()) {
        saw_dir = true;
        let name = cdir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            tracing::warn!(folder = %cdir.display(), "hidden folder skipped (not a class)");
            continue;
        }
        let images: Vec<PathBuf> = read_dir_sorted(&cdir)?
            .into_iter()
            .filter(|p| is_image(p))
            .collect();
        if images.is_empty() {
            tracing::warn!(folder = %cdir.display(), "folder without .png/.jpg images skipped (not a class)");
            continue;
        }
        out.push((name, images));
    }
    if out.is_empty() {
        return Err(DataError::format(
            dir,
            if saw_dir {
                "class folders contain no .png/.jpg images"
            } else {
                "no class folders found; expected <root>/<class>/*.png|jpg (or <root>/train/<class>/...)"
            },
        ));
    }
    Ok(out)
}

/// Lists `(file, class index)` under `dir/<class>/`. With `classes` (the training split's class
/// list), each folder takes its index by name in that list: a class the training split does not
/// have is an error naming it, and one it has but `dir` lacks is a warning. Without, the sorted
/// folder names are the classes.
fn scan(dir: &Path, classes: Option<&[String]>) -> Result<Listing, DataError> {
    let folders = class_folders(dir)?;
    let classes: Vec<String> = match classes {
        Some(c) => c.to_vec(),
        None => folders.iter().map(|(n, _)| n.clone()).collect(),
    };
    let mut files = Vec::new();
    for (name, images) in folders {
        let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
            DataError::format(
                dir.join(&name),
                format!(
                    "class '{name}' is not one of the training split's classes ({})",
                    classes.join(", ")
                ),
            )
        })?;
        files.extend(images.into_iter().map(|f| (f, label)));
    }
    for c in &classes {
        if !files.iter().any(|(_, l)| classes[*l] == *c) {
            tracing::warn!(split = %dir.display(), class = %c, "class of the training split has no images here");
        }
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
///
/// `classes` is the label list a trained model knows (recorded in its run configuration): when
/// given, every folder of either split takes its label by name in it (a folder it lacks is an
/// error naming it), so a model is evaluated on another folder without its labels shifting.
/// Without, the training split's sorted folder names are the classes.
pub fn load_folder(
    root: &Path,
    train: bool,
    size: usize,
    limit: Option<usize>,
    classes: Option<&[String]>,
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
    // The test split's labels are the training split's indices, matched by class name, so a
    // test folder that lacks a class (or has them in another order) cannot shift the labels.
    let train_classes = match (&split_dir, train) {
        _ if classes.is_some() => classes.map(<[String]>::to_vec),
        (Some(_), false) if root.join("train").is_dir() => Some(
            class_folders(&root.join("train"))?
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let (mut files, classes) = match split_dir {
        Some(d) => scan(&d, train_classes.as_deref())?,
        None => {
            let (files, classes) = scan(root, train_classes.as_deref())?;
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
        let ds = load_folder(dir.path(), true, 8, None, None).expect("load");
        assert_eq!(ds.classes, vec!["cats", "dogs"]);
        assert_eq!(ds.labels, vec![0, 1]);
        assert_eq!(ds.image(0)[0], 255); // red plane of the cat
        assert_eq!(ds.image(1)[2 * 64], 255); // blue plane of the dog
        std::fs::write(dir.path().join("test/dogs/broken.jpg"), b"not a jpeg").expect("write");
        let e = load_folder(dir.path(), false, 8, None, None)
            .expect_err("broken")
            .to_string();
        assert!(
            e.contains("broken.jpg") && e.contains("cannot decode"),
            "{e}"
        );
    }

    fn image(dir: &Path, split: &str, class: &str, file: &str, value: u8) {
        let d = dir.join(split).join(class);
        std::fs::create_dir_all(&d).expect("mkdir");
        image::RgbImage::from_pixel(4, 4, image::Rgb([value, 0, 0]))
            .save(d.join(file))
            .expect("save");
    }

    #[test]
    fn test_labels_follow_the_training_classes_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, c) in ["cat", "dog", "horse"].iter().enumerate() {
            image(dir.path(), "train", c, "a.png", i as u8);
        }
        // The test split lacks "dog": "horse" must keep index 2, not become 1.
        image(dir.path(), "test", "cat", "a.png", 0);
        image(dir.path(), "test", "horse", "a.png", 2);
        // Hidden and empty folders are not classes.
        std::fs::create_dir_all(dir.path().join("train/.ipynb_checkpoints")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("test/empty")).expect("mkdir");
        let train = load_folder(dir.path(), true, 4, None, None).expect("train");
        assert_eq!(train.classes, vec!["cat", "dog", "horse"]);
        let test = load_folder(dir.path(), false, 4, None, None).expect("test");
        assert_eq!(test.classes, train.classes);
        assert_eq!(test.labels, vec![0, 2]);
        assert_eq!(
            test.image(1)[0],
            2,
            "the horse image carries the horse label"
        );
        // A class the model was never trained on is an error that names it.
        image(dir.path(), "test", "zebra", "a.png", 9);
        let e = load_folder(dir.path(), false, 4, None, None)
            .expect_err("unknown class")
            .to_string();
        assert!(
            e.contains("zebra") && e.contains("not one of the training split's classes"),
            "{e}"
        );
    }
}
