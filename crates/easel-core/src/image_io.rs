//! Loading photos, saving results, and finding the images to process.
//!
//! Loading is defensive: the format is detected from the content, the pixel
//! count is checked from the header before any pixel is decoded, and every
//! failure becomes an [`Error`] that names the file. Saving is atomic (temp
//! file + fsync + rename) and refuses to overwrite an input.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result, SizeRelief};
use crate::parameters::Parameters;

/// Default for [`LoadOptions::max_pixels`]: 64 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;

/// Decode limit used by [`LoadOptions::with_max_side`]: 256 megapixels.
///
/// A full-resolution image that is downscaled on load only lives until it is
/// resized, so it may be bigger than what is safe to feed a network. 256 MP
/// is 768 MB as RGB8, the most we are willing to hold for one photo.
pub const DOWNSCALE_MAX_PIXELS: u64 = 256_000_000;

/// File extensions (lower case, without the dot) that [`collect_images`]
/// picks up when expanding a directory.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"];

/// The `tEXt`/`iTXt` keyword under which [`save_image`] stores
/// [`Parameters`] in a PNG: the convention of the AUTOMATIC1111 web UI,
/// which most image viewers and tools for generated images understand.
pub const PARAMETERS_KEYWORD: &str = "parameters";

/// JPEG quality used by [`save_image`]: visually lossless for stylised output.
pub const JPEG_QUALITY: u8 = 95;

/// How [`load_rgb`] treats big images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Downscale so that the longer side is at most this many pixels
    /// (aspect ratio kept, Lanczos3). Images already within the limit are
    /// returned untouched. Must be at least 1.
    pub max_side: Option<u32>,
    /// Hard limit on `width * height` as announced by the file header,
    /// checked before decoding so that a crafted header cannot make us
    /// allocate. It applies whether or not `max_side` is set: the full image
    /// has to be decoded before it can be downscaled. Callers that downscale
    /// can afford a larger value, see [`LoadOptions::with_max_side`].
    pub max_pixels: u64,
}

impl Default for LoadOptions {
    /// No downscaling, [`DEFAULT_MAX_PIXELS`].
    fn default() -> Self {
        Self {
            max_side: None,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl LoadOptions {
    /// Downscale to `max_side` on load, and accept images up to
    /// [`DOWNSCALE_MAX_PIXELS`] since they are only held until resized.
    ///
    /// This is what `--max-size N` means, and why the "over the limit" error
    /// suggests it.
    pub fn with_max_side(max_side: u32) -> Self {
        Self {
            max_side: Some(max_side),
            max_pixels: DOWNSCALE_MAX_PIXELS.max(DEFAULT_MAX_PIXELS),
        }
    }
}

/// Loads an image file as 8-bit RGB, ready for the networks.
///
/// * JPEG, PNG, WebP, BMP and TIFF are decoded; the format is detected from
///   the content, not the extension.
/// * The EXIF orientation (JPEG, PNG `eXIf`, TIFF, WebP) is applied, so the
///   result is upright as a photo viewer would show it.
/// * Transparency is composited over white; grey, 16-bit and CMYK images are
///   converted to RGB8.
/// * `opts.max_pixels` is checked from the header before decoding;
///   `opts.max_side` downscales after decoding.
///
/// Errors name the file: missing, a directory, empty, unsupported format,
/// truncated or corrupt, zero size, over the pixel limit.
pub fn load_rgb(path: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    if opts.max_side == Some(0) {
        return Err(Error::InvalidArgument(
            "the maximum image side must be at least 1 pixel, got 0".to_string(),
        ));
    }
    let file = open_input(path)?;
    decode_from(path, BufReader::new(file), opts)
}

/// [`load_rgb`] of an image held in memory (e.g. read from standard input); `name` stands for
/// the file in messages.
pub fn decode_rgb(bytes: &[u8], name: &Path, opts: &LoadOptions) -> Result<RgbImage> {
    if opts.max_side == Some(0) {
        return Err(Error::InvalidArgument(
            "the maximum image side must be at least 1 pixel, got 0".to_string(),
        ));
    }
    if bytes.is_empty() {
        return Err(Error::EmptyFile {
            path: name.to_path_buf(),
        });
    }
    decode_from(name, Cursor::new(bytes), opts)
}

/// The checks and decoding of [`load_rgb`] on any seekable reader.
fn decode_from<R: io::BufRead + io::Seek>(
    path: &Path,
    mut reader: R,
    opts: &LoadOptions,
) -> Result<RgbImage> {
    // PNG dimensions sit at a fixed offset; checking them ourselves means a
    // crafted header is refused even if the rest of the file is garbage, and
    // a zero size gets its own message instead of a generic decoder error.
    if let Some((width, height)) =
        sniff_png_dimensions(&mut reader).map_err(|e| read_error(path, &e))?
    {
        check_dimensions(path, width, height, opts)?;
    }

    let reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| read_error(path, &e))?;
    if reader.format().is_none() {
        return Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            detail: None,
        });
    }
    if reader.format() == Some(ImageFormat::Jpeg) {
        // zune-jpeg (lenient mode) fills a cut-off scan with grey and reports
        // success; a half-grey photo is worse than an error, so walk the
        // marker structure ourselves. JPEG decoding reads the whole file
        // into memory anyway.
        let mut bytes = Vec::new();
        reader
            .into_inner()
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(path, &e))?;
        check_jpeg_complete(&bytes).map_err(|reason| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        })?;
        let reader = ImageReader::with_format(Cursor::new(bytes.as_slice()), ImageFormat::Jpeg);
        decode_checked(path, reader, opts)
    } else {
        decode_checked(path, reader, opts)
    }
}

/// Second half of [`load_rgb`]: header check, decode, orientation, flatten,
/// downscale.
fn decode_checked<R: io::BufRead + io::Seek>(
    path: &Path,
    mut reader: ImageReader<R>,
    opts: &LoadOptions,
) -> Result<RgbImage> {
    // The header check below is ours; the decoder's own allocation cap is
    // set just high enough for the largest image we accept (RGBA, 16 bits)
    // plus metadata, so it never fires first on a legitimate image.
    let mut limits = Limits::default();
    limits.max_alloc = Some(
        opts.max_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20)
            .max(512 << 20),
    );
    reader.limits(limits);

    let mut decoder = reader.into_decoder().map_err(|e| decode_error(path, e))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(path, width, height, opts)?;

    // A damaged EXIF block must not cost the user their photo: fall back to
    // the stored orientation.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let decoded = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(path, e))?;

    let mut rgb = DynamicImage::ImageRgb8(flatten_to_rgb8(decoded));
    rgb.apply_orientation(orientation);
    let rgb = rgb.into_rgb8();

    Ok(match opts.max_side {
        Some(max_side) => downscale_to_fit(rgb, max_side),
        None => rgb,
    })
}

/// Opens `path` for reading, turning every way it can fail into a message
/// about that path.
fn open_input(path: &Path) -> Result<File> {
    let meta = fs::metadata(path).map_err(|e| read_error(path, &e))?;
    if meta.is_dir() {
        return Err(Error::Read {
            path: path.to_path_buf(),
            reason: "is a directory".to_string(),
        });
    }
    if meta.len() == 0 {
        return Err(Error::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    File::open(path).map_err(|e| read_error(path, &e))
}

fn io_reason(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => "file not found".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        io::ErrorKind::IsADirectory => "is a directory".to_string(),
        _ => err.to_string(),
    }
}

fn read_error(path: &Path, err: &io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        reason: io_reason(err),
    }
}

/// Maps a decoder error to the variant a user can act on.
fn decode_error(path: &Path, err: ImageError) -> Error {
    let path = path.to_path_buf();
    match err {
        ImageError::Unsupported(e) => Error::UnsupportedFormat {
            path,
            detail: Some(e.to_string()),
        },
        // Decoders read through `Read`, so running out of data shows up as
        // an I/O error rather than a decoding one.
        ImageError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => Error::Corrupt {
            path,
            reason: "unexpected end of file".to_string(),
        },
        ImageError::IoError(e) => Error::Read {
            path,
            reason: io_reason(&e),
        },
        ImageError::Limits(e) => Error::Read {
            path,
            reason: format!("decoder memory limit exceeded ({e})"),
        },
        ImageError::Decoding(e) => Error::Corrupt {
            path,
            reason: e.to_string(),
        },
        other => Error::Corrupt {
            path,
            reason: other.to_string(),
        },
    }
}

/// Checks that a JPEG's marker structure runs to its end-of-image marker.
///
/// Segments are skipped by their length (so an EXIF thumbnail's own EOI is
/// never mistaken for ours), entropy-coded data is scanned for the next
/// real marker (`FF00` is a stuffed byte, `FFD0`..`FFD7` are restarts).
/// Data after EOI is allowed: some cameras append extra data. Files that
/// simply lack an EOI are refused too; that is rare outside truncation.
fn check_jpeg_complete(data: &[u8]) -> std::result::Result<(), String> {
    const TRUNCATED: &str =
        "the file ends before the JPEG end-of-image marker (truncated download or copy?)";
    if !data.starts_with(&[0xff, 0xd8]) {
        return Err("missing the JPEG start-of-image marker".to_string());
    }
    let mut i = 2;
    loop {
        // Lenient like the decoder: skip stray bytes, then fill bytes.
        while i < data.len() && data[i] != 0xff {
            i += 1;
        }
        while i < data.len() && data[i] == 0xff {
            i += 1;
        }
        let Some(&marker) = data.get(i) else {
            return Err(TRUNCATED.to_string());
        };
        i += 1;
        match marker {
            0xd9 => return Ok(()),
            // Markers without a length field.
            0x00 | 0x01 | 0xd0..=0xd7 => continue,
            _ => {}
        }
        let Some(len_bytes) = data.get(i..i + 2) else {
            return Err(TRUNCATED.to_string());
        };
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 {
            return Err(format!("bad JPEG segment length {len} at byte {i}"));
        }
        if i + len > data.len() {
            return Err(TRUNCATED.to_string());
        }
        i += len;
        if marker == 0xda {
            // Start of scan: entropy-coded data runs to the next marker.
            loop {
                // `i <= data.len()` here: segment ends were bounds-checked
                // above and `i = j + 2` only follows `data.get(j + 1)`.
                let Some(offset) = data[i..].iter().position(|&b| b == 0xff) else {
                    return Err(TRUNCATED.to_string());
                };
                let j = i + offset;
                match data.get(j + 1) {
                    None => return Err(TRUNCATED.to_string()),
                    Some(0x00 | 0xd0..=0xd7) => i = j + 2,
                    Some(_) => {
                        i = j;
                        break;
                    }
                }
            }
        }
    }
}

/// Reads a PNG's width and height from its IHDR chunk without consuming the
/// reader. `None` when the data is not a PNG (or too short to tell).
fn sniff_png_dimensions<R: io::BufRead + io::Seek>(
    reader: &mut R,
) -> io::Result<Option<(u32, u32)>> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    let start = reader.stream_position()?;
    let mut head = [0u8; 24];
    let mut filled = 0;
    while filled < head.len() {
        let n = reader.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    reader.seek(io::SeekFrom::Start(start))?;
    // Layout: signature (8), chunk length (4), "IHDR" (4), width (4), height (4).
    if filled < head.len() || head[..8] != SIGNATURE || &head[12..16] != b"IHDR" {
        return Ok(None);
    }
    let width = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
    let height = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
    Ok(Some((width, height)))
}

fn check_dimensions(path: &Path, width: u32, height: u32, opts: &LoadOptions) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::ZeroSize {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels <= opts.max_pixels {
        return Ok(());
    }
    // Downscaling is offered only when it would actually get the image through.
    let relief = if opts.max_side.is_some() {
        SizeRelief::SmallerImage
    } else if pixels <= DOWNSCALE_MAX_PIXELS {
        SizeRelief::DownscaleOnLoad
    } else {
        SizeRelief::BeyondDownscale {
            max_pixels: DOWNSCALE_MAX_PIXELS,
        }
    };
    Err(Error::TooLarge {
        path: path.to_path_buf(),
        width,
        height,
        max_pixels: opts.max_pixels,
        relief,
    })
}

/// Converts any decoded image to RGB8, compositing transparency over white.
///
/// Dropping alpha would expose whatever colour happens to be stored under
/// transparent pixels (often black); white is what viewers show.
fn flatten_to_rgb8(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        // Grey is replicated, 16-bit is rounded to 8 (v / 257), float is clamped.
        return img.into_rgb8();
    }
    if img.color().bytes_per_pixel() / img.color().channel_count() == 1 {
        let rgba = img.into_rgba8();
        RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            let a = u32::from(a);
            // c*a + 255*(1-a), in units of 1/255, rounded.
            let over = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
            image::Rgb([over(r), over(g), over(b)])
        })
    } else {
        let rgba = img.into_rgba16();
        RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            let a = u64::from(a);
            let over = |c: u16| {
                let v16 = (u64::from(c) * a + 65535 * (65535 - a) + 32767) / 65535;
                ((v16 * 255 + 32767) / 65535) as u8
            };
            image::Rgb([over(r), over(g), over(b)])
        })
    }
}

/// Shrinks `img` so its longer side is `max_side`, keeping the aspect ratio;
/// smaller images are returned as they are (never upscaled).
///
/// Lanczos3's support grows with the reduction factor, so shrinking a 48 MP
/// photo to 1024 px directly takes seconds. Big reductions first
/// box-average (exact area averaging, alias-free and fast) down to twice
/// the target, then Lanczos3 does the last 2x for sharpness.
pub fn downscale_to_fit(img: RgbImage, max_side: u32) -> RgbImage {
    let (width, height) = img.dimensions();
    let long = width.max(height);
    if long <= max_side {
        return img;
    }
    let fit = |side: u32, target: u32| {
        let scaled = (f64::from(side) * f64::from(target) / f64::from(long)).round();
        (scaled as u32).clamp(1, target)
    };
    let img = match max_side.checked_mul(2) {
        Some(twice) if long / 3 > max_side => {
            image::imageops::thumbnail(&img, fit(width, twice), fit(height, twice))
        }
        _ => img,
    };
    image::imageops::resize(
        &img,
        fit(width, max_side),
        fit(height, max_side),
        FilterType::Lanczos3,
    )
}

/// Output formats [`save_image`] writes, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    Png,
    Jpeg,
}

impl OutputFormat {
    fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "png" => Ok(Self::Png),
            "jpg" | "jpeg" => Ok(Self::Jpeg),
            _ => Err(Error::UnsupportedOutput {
                path: path.to_path_buf(),
                ext,
            }),
        }
    }
}

/// Saves `img` to `out`, as PNG or JPEG according to the extension
/// (`.png`, `.jpg`, `.jpeg`, any case).
///
/// * PNG output carries `params` (if any) as a text chunk with keyword
///   [`PARAMETERS_KEYWORD`]: `tEXt` when the text is Latin-1, `iTXt` (UTF-8)
///   otherwise. JPEG output is quality [`JPEG_QUALITY`] and carries no
///   parameters.
/// * The write is atomic: the data goes to `<out>.<random>.tmp` in the same
///   directory, is fsynced, then renamed over `out`. A crash leaves either
///   the old file or the new one, never half an image.
/// * Refuses to write when `out` is the same file as one of `inputs`
///   (compared by canonical path, so `./dir/../dir/a.png` is caught).
/// * The parent directory must exist; it is not created.
pub fn save_image(
    img: &RgbImage,
    out: &Path,
    params: Option<&Parameters>,
    inputs: &[PathBuf],
) -> Result<()> {
    let format = OutputFormat::from_path(out)?;
    check_output(out, inputs, img.width(), img.height())?;
    write_atomically(out, |file| encode_into(file, img, format, params)).map_err(|reason| {
        Error::Write {
            path: out.to_path_buf(),
            reason,
        }
    })
}

/// `img` as PNG bytes with `params` (if any) in the text chunk [`save_image`] writes (for
/// standard output).
pub fn encode_png(img: &RgbImage, params: Option<&Parameters>) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    write_png(
        &mut bytes,
        img.width(),
        img.height(),
        png::BitDepth::Eight,
        img.as_raw(),
        params,
    )
    .map_err(|reason| Error::Write {
        path: PathBuf::from("<stdout>"),
        reason,
    })?;
    Ok(bytes)
}

/// A 16-bit-per-channel RGB image, as [`save_image16`] writes it.
pub type Rgb16Image = image::ImageBuffer<image::Rgb<u16>, Vec<u16>>;

/// Saves a 16-bit RGB image as a 16-bit PNG, with the same guarantees as
/// [`save_image`] (parameters chunk, atomic write, never over an input).
/// JPEG cannot hold 16 bits per channel: a `.jpg` / `.jpeg` `out` is
/// refused.
pub fn save_image16(
    img: &Rgb16Image,
    out: &Path,
    params: Option<&Parameters>,
    inputs: &[PathBuf],
) -> Result<()> {
    if OutputFormat::from_path(out)? != OutputFormat::Png {
        return Err(Error::Write {
            path: out.to_path_buf(),
            reason: "JPEG holds 8 bits per channel; write 16-bit images to a .png file".to_string(),
        });
    }
    check_output(out, inputs, img.width(), img.height())?;
    // PNG stores 16-bit samples big-endian.
    let bytes: Vec<u8> = img.as_raw().iter().flat_map(|v| v.to_be_bytes()).collect();
    write_atomically(out, |file| {
        let mut w = BufWriter::new(file);
        write_png(
            &mut w,
            img.width(),
            img.height(),
            png::BitDepth::Sixteen,
            &bytes,
            params,
        )?;
        w.flush().map_err(|e| io_reason(&e))
    })
    .map_err(|reason| Error::Write {
        path: out.to_path_buf(),
        reason,
    })
}

/// The checks shared by [`save_image`] and [`save_image16`]: not an input,
/// non-zero size, an existing parent directory, not a directory itself.
fn check_output(out: &Path, inputs: &[PathBuf], width: u32, height: u32) -> Result<()> {
    if is_one_of(out, inputs) {
        return Err(Error::OutputIsInput {
            path: out.to_path_buf(),
        });
    }
    let write_error = |reason: String| Error::Write {
        path: out.to_path_buf(),
        reason,
    };
    if width == 0 || height == 0 {
        return Err(write_error(format!(
            "the image has zero size ({width}x{height})"
        )));
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(write_error(format!("directory {} {what}", dir.display())));
    }
    if out.is_dir() {
        return Err(write_error("it is a directory".to_string()));
    }
    if out.file_name().is_none() {
        return Err(write_error("the path has no file name".to_string()));
    }
    Ok(())
}

/// [`crate::write_atomic`] with `write`'s and the file system's errors as one-line reasons.
fn write_atomically(
    out: &Path,
    write: impl FnOnce(&File) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    crate::atomic::write_atomic(out, |file| write(file).map_err(io::Error::other))
        .map_err(|e| io_reason(&e))
}

fn encode_into(
    file: &File,
    img: &RgbImage,
    format: OutputFormat,
    params: Option<&Parameters>,
) -> std::result::Result<(), String> {
    let mut w = BufWriter::new(file);
    match format {
        OutputFormat::Png => write_png(
            &mut w,
            img.width(),
            img.height(),
            png::BitDepth::Eight,
            img.as_raw(),
            params,
        )?,
        OutputFormat::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, JPEG_QUALITY)
                .encode_image(img)
                .map_err(|e| e.to_string())?;
        }
    }
    w.flush().map_err(|e| io_reason(&e))
}

/// Writes an RGB PNG of `depth` (`data` in PNG byte order) with `params` as
/// a text chunk under [`PARAMETERS_KEYWORD`].
fn write_png<W: Write>(
    w: W,
    width: u32,
    height: u32,
    depth: png::BitDepth,
    data: &[u8],
    params: Option<&Parameters>,
) -> std::result::Result<(), String> {
    let mut encoder = png::Encoder::new(w, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(depth);
    if let Some(params) = params {
        let text = params.to_text();
        // tEXt is Latin-1 only; iTXt carries UTF-8 but older readers skip
        // it, so use it only when needed.
        let latin1 = text.chars().all(|c| u32::from(c) <= 0xff);
        let added = if latin1 {
            encoder.add_text_chunk(PARAMETERS_KEYWORD.to_string(), text)
        } else {
            encoder.add_itxt_chunk(PARAMETERS_KEYWORD.to_string(), text)
        };
        added.map_err(|e| e.to_string())?;
    }
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(data).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

/// Canonical form of a path that may not exist yet: the file itself if it
/// exists, else its canonical parent joined with its file name.
fn canonical_target(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = fs::canonicalize(path) {
        return Some(p);
    }
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::canonicalize(parent).ok().map(|p| p.join(name))
}

/// Whether `out` names the same file as any of `inputs`.
pub(crate) fn is_one_of(out: &Path, inputs: &[PathBuf]) -> bool {
    let Some(out) = canonical_target(out) else {
        return false;
    };
    inputs
        .iter()
        .any(|input| canonical_target(input).is_some_and(|input| input == out))
}

/// Reads back the text that [`save_image`] stored under
/// [`PARAMETERS_KEYWORD`] in a PNG (`tEXt`, `zTXt` or `iTXt`).
///
/// Returns `Ok(None)` when the PNG has no such chunk before its image data,
/// and also for files that are not PNGs (only PNG output carries
/// parameters). A damaged PNG is an error.
pub fn read_png_parameters(path: &Path) -> Result<Option<String>> {
    let mut reader = BufReader::new(open_input(path)?);
    if sniff_png_dimensions(&mut reader)
        .map_err(|e| read_error(path, &e))?
        .is_none()
    {
        return Ok(None);
    }
    let mut decoder = png::Decoder::new(reader);
    decoder.set_ignore_text_chunk(false);
    let png_reader = decoder.read_info().map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let info = png_reader.info();
    if let Some(chunk) = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == PARAMETERS_KEYWORD)
    {
        return Ok(Some(chunk.text.clone()));
    }
    if let Some(chunk) = info
        .compressed_latin1_text
        .iter()
        .find(|c| c.keyword == PARAMETERS_KEYWORD)
    {
        let text = chunk.get_text().map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("bad zTXt chunk: {e}"),
        })?;
        return Ok(Some(text));
    }
    if let Some(chunk) = info
        .utf8_text
        .iter()
        .find(|c| c.keyword == PARAMETERS_KEYWORD)
    {
        let text = chunk.get_text().map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("bad iTXt chunk: {e}"),
        })?;
        return Ok(Some(text));
    }
    Ok(None)
}

/// Turns the paths given on the command line into the list of images to
/// process.
///
/// * Files are kept as given, whatever their extension (the format is
///   detected from content when loading).
/// * Directories are expanded, not recursively, to the files whose
///   extension is in [`IMAGE_EXTENSIONS`] (any case), sorted by name.
///   Hidden files (name starting with `.`, e.g. macOS `._IMG_0001.jpg`
///   resource forks) are skipped.
/// * A path that does not exist is an error, and so is ending up with no
///   image at all.
pub fn collect_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for path in paths {
        let input_error = |e: &io::Error| Error::Input {
            path: path.clone(),
            reason: io_reason(e),
        };
        let meta = fs::metadata(path).map_err(|e| input_error(&e))?;
        if !meta.is_dir() {
            images.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(path).map_err(|e| input_error(&e))? {
            let entry = entry.map_err(|e| input_error(&e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || !has_image_extension(&name) {
                continue;
            }
            let entry_path = entry.path();
            // metadata() follows symlinks, so a link to an image counts.
            if fs::metadata(&entry_path).is_ok_and(|m| m.is_file()) {
                found.push(entry_path);
            }
        }
        found.sort();
        images.extend(found);
    }
    if images.is_empty() {
        return Err(Error::NoImages {
            paths: paths.to_vec(),
        });
    }
    Ok(images)
}

fn has_image_extension(name: &OsStr) -> bool {
    Path::new(name).extension().is_some_and(|ext| {
        let ext = ext.to_string_lossy().to_ascii_lowercase();
        IMAGE_EXTENSIONS.contains(&ext.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        found.sort();
        found
    }

    #[test]
    fn failure_mid_write_removes_temp_file_and_keeps_old_output() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out.png");
        fs::write(&out, b"previous result").expect("write");
        let mut seen_temp = None;
        let result = write_atomically(&out, |file| {
            let mut file = file;
            file.write_all(b"half an ima").map_err(|e| e.to_string())?;
            seen_temp = entries(dir.path()).into_iter().find(|p| p != &out);
            Err("encoder failed".to_string())
        });
        assert_eq!(result, Err("encoder failed".to_string()));
        let temp = seen_temp.expect("a temp file existed during the write");
        let temp_name = temp.file_name().map(|n| n.to_string_lossy().into_owned());
        let temp_name = temp_name.unwrap_or_default();
        assert!(
            temp_name.starts_with("out.png.") && temp_name.ends_with(".tmp"),
            "{temp_name}"
        );
        assert_eq!(entries(dir.path()), vec![out.clone()]);
        assert_eq!(fs::read(&out).ok(), Some(b"previous result".to_vec()));
    }

    #[test]
    fn jpeg_walk_accepts_minimal_structure() {
        // SOI, a 4-byte APP0 holding an embedded FFD9, SOS, data with a
        // stuffed FF00 and a restart marker, EOI.
        let data = [
            0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 0xff, 0xd9, 0xff, 0xda, 0x00, 0x02, 0x12, 0xff,
            0x00, 0x34, 0xff, 0xd0, 0x56, 0xff, 0xd9,
        ];
        assert_eq!(check_jpeg_complete(&data), Ok(()));
        for cut in 2..data.len() {
            assert!(check_jpeg_complete(&data[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn sixteen_bit_png_round_trips_with_parameters() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("deep.png");
        // Values that differ only in the low byte, which 8-bit output would lose.
        let img = Rgb16Image::from_fn(5, 3, |x, y| {
            let v = (x * 13_107 + y * 257 + 1) as u16;
            image::Rgb([v, 65_535 - v, v ^ 0x00ff])
        });
        let mut params = Parameters::new("sd");
        params.prompt = Some("a cat, in oil".to_string());
        params.seed = Some(42);
        save_image16(&img, &out, Some(&params), &[]).expect("save");
        let back = image::open(&out).expect("decode");
        assert_eq!(back.color(), image::ColorType::Rgb16);
        assert_eq!(back.into_rgb16(), img);
        assert_eq!(
            read_png_parameters(&out).expect("read"),
            Some(params.to_text())
        );

        let jpeg = dir.path().join("deep.jpg");
        let err = save_image16(&img, &jpeg, None, &[])
            .expect_err("JPEG refuses 16 bits")
            .to_string();
        assert!(
            err.contains("8 bits per channel") && err.contains(".png"),
            "{err}"
        );
        assert!(!jpeg.exists());
        let err = save_image16(&img, &out, None, std::slice::from_ref(&out))
            .expect_err("never over an input")
            .to_string();
        assert!(err.contains("input"), "{err}");
    }
}
