//! OpenSlide (3.4 or later), loaded when a slide is first opened rather than linked: idc
//! trains and serves patches on machines without it, and says what to install when a slide
//! needs it. Opens a slide, reports its levels and properties, and reads a region of a level
//! as RGB.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_double, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The shared library's names, newest ABI first.
const LIBRARIES: [&str; 2] = ["libopenslide.so.1", "libopenslide.so.0"];

/// Why a slide cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    #[error(
        "reading whole-slide images needs OpenSlide 3.4 or later ({tried}): {reason}; install it (Debian/Ubuntu: apt-get install libopenslide0)"
    )]
    NoLibrary { tried: String, reason: String },
    #[error("{path}: not a slide OpenSlide can open ({what})")]
    NotASlide { path: PathBuf, what: String },
    #[error("{path}: OpenSlide cannot read it: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

impl crate::exit::ProcessExitCode for SlideError {
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        // Each is fixed by changing the input or the machine, not by retrying.
        crate::exit::ExitCode::UserError
    }
}

type Handle = *mut c_void;

/// The functions of OpenSlide's C API that idc calls.
struct Api {
    open: unsafe extern "C" fn(*const c_char) -> Handle,
    close: unsafe extern "C" fn(Handle),
    get_error: unsafe extern "C" fn(Handle) -> *const c_char,
    detect_vendor: unsafe extern "C" fn(*const c_char) -> *const c_char,
    level_count: unsafe extern "C" fn(Handle) -> i32,
    level_dimensions: unsafe extern "C" fn(Handle, i32, *mut i64, *mut i64),
    level_downsample: unsafe extern "C" fn(Handle, i32) -> c_double,
    property_names: unsafe extern "C" fn(Handle) -> *const *const c_char,
    property_value: unsafe extern "C" fn(Handle, *const c_char) -> *const c_char,
    read_region: unsafe extern "C" fn(Handle, *mut u32, i64, i64, i32, i64, i64),
    version: unsafe extern "C" fn() -> *const c_char,
    /// Keeps the functions above loaded.
    _lib: libloading::Library,
}

/// OpenSlide, loaded once per process.
fn api() -> Result<&'static Api, SlideError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load)
        .as_ref()
        .map_err(|reason| SlideError::NoLibrary {
            tried: LIBRARIES.join(", "),
            reason: reason.clone(),
        })
}

fn load() -> Result<Api, String> {
    let mut last = String::new();
    for name in LIBRARIES {
        // SAFETY: OpenSlide's initialisers only set up its own state.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return bind(lib).map_err(|e| format!("{name}: {e}")),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn bind(lib: libloading::Library) -> Result<Api, libloading::Error> {
    // SAFETY: each symbol is declared with the signature of OpenSlide 3.4's openslide.h.
    unsafe {
        Ok(Api {
            open: *lib.get(b"openslide_open\0")?,
            close: *lib.get(b"openslide_close\0")?,
            get_error: *lib.get(b"openslide_get_error\0")?,
            detect_vendor: *lib.get(b"openslide_detect_vendor\0")?,
            level_count: *lib.get(b"openslide_get_level_count\0")?,
            level_dimensions: *lib.get(b"openslide_get_level_dimensions\0")?,
            level_downsample: *lib.get(b"openslide_get_level_downsample\0")?,
            property_names: *lib.get(b"openslide_get_property_names\0")?,
            property_value: *lib.get(b"openslide_get_property_value\0")?,
            read_region: *lib.get(b"openslide_read_region\0")?,
            version: *lib.get(b"openslide_get_version\0")?,
            _lib: lib,
        })
    }
}

/// The loaded OpenSlide's version.
pub fn version() -> Result<String, SlideError> {
    let api = api()?;
    // SAFETY: a static string owned by the library.
    Ok(unsafe { text((api.version)()) }.unwrap_or_default())
}

/// A C string OpenSlide owns, copied.
///
/// # Safety
/// `p` is null or a NUL-terminated string valid for the call.
unsafe fn text(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// One pyramid level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub width: u64,
    pub height: u64,
    /// Level-0 pixels per pixel of this level.
    pub downsample: f64,
}

/// An open slide. OpenSlide's handles may be read from several threads at once.
pub struct Slide {
    handle: Handle,
    api: &'static Api,
    path: PathBuf,
    levels: Vec<Level>,
}

// SAFETY: OpenSlide documents its handles as thread-safe for reads.
unsafe impl Send for Slide {}
unsafe impl Sync for Slide {}

impl std::fmt::Debug for Slide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slide({})", self.path.display())
    }
}

impl Drop for Slide {
    fn drop(&mut self) {
        // SAFETY: opened by openslide_open, closed once.
        unsafe { (self.api.close)(self.handle) }
    }
}

fn c_path(path: &Path) -> Result<CString, SlideError> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| SlideError::Invalid {
        path: path.to_path_buf(),
        what: "the path holds a NUL byte".into(),
    })
}

impl Slide {
    /// The vendor OpenSlide recognises in `path`'s content (`aperio`, `generic-tiff`, ...), or
    /// `None` when it is no slide format it knows.
    pub fn detect_vendor(path: &Path) -> Result<Option<String>, SlideError> {
        let api = api()?;
        let c = c_path(path)?;
        // SAFETY: a valid C string; the result is a static string or null.
        Ok(unsafe { text((api.detect_vendor)(c.as_ptr())) })
    }

    /// Opens the slide at `path`.
    pub fn open(path: &Path) -> Result<Slide, SlideError> {
        let api = api()?;
        let c = c_path(path)?;
        if !path.is_file() {
            return Err(SlideError::Unreadable {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        // SAFETY: a valid C string; null means no known format.
        let handle = unsafe { (api.open)(c.as_ptr()) };
        if handle.is_null() {
            return Err(SlideError::NotASlide {
                path: path.to_path_buf(),
                what: content_of(path),
            });
        }
        let mut slide = Slide {
            handle,
            api,
            path: path.to_path_buf(),
            levels: Vec::new(),
        };
        slide.check()?;
        // SAFETY: a live handle.
        let count = unsafe { (api.level_count)(handle) };
        for level in 0..count.max(0) {
            let (mut w, mut h) = (0i64, 0i64);
            // SAFETY: a live handle, a level below the count, two out-parameters.
            let downsample = unsafe {
                (api.level_dimensions)(handle, level, &mut w, &mut h);
                (api.level_downsample)(handle, level)
            };
            slide.levels.push(Level {
                width: w.max(0) as u64,
                height: h.max(0) as u64,
                downsample,
            });
        }
        slide.check()?;
        if slide.levels.is_empty() || slide.levels[0].width == 0 || slide.levels[0].height == 0 {
            return Err(slide.invalid("OpenSlide reports no pixels (no levels)"));
        }
        Ok(slide)
    }

    /// OpenSlide's error for this handle (once set, every later call fails), as an error.
    fn check(&self) -> Result<(), SlideError> {
        // SAFETY: a live handle; the message lives as long as it.
        match unsafe { text((self.api.get_error)(self.handle)) } {
            None => Ok(()),
            Some(reason) => Err(SlideError::Unreadable {
                path: self.path.clone(),
                reason,
            }),
        }
    }

    fn invalid(&self, what: &str) -> SlideError {
        SlideError::Invalid {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// The file it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its pyramid, level 0 (full resolution) first.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Property `name` (`openslide.vendor`, `openslide.mpp-x`, `aperio.AppMag`, ...).
    pub fn property(&self, name: &str) -> Option<String> {
        let c = CString::new(name).ok()?;
        // SAFETY: a live handle and a valid C string; the value lives as long as the handle.
        unsafe { text((self.api.property_value)(self.handle, c.as_ptr())) }
    }

    /// Every property, by name.
    pub fn properties(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        // SAFETY: a live handle; a null-terminated array of strings owned by it.
        unsafe {
            let names = (self.api.property_names)(self.handle);
            if names.is_null() {
                return out;
            }
            let mut i = 0;
            while !(*names.add(i)).is_null() {
                if let Some(name) = text(*names.add(i)) {
                    let value = self.property(&name).unwrap_or_default();
                    out.insert(name, value);
                }
                i += 1;
            }
        }
        out
    }

    /// The `width` x `height` pixels of `level` whose top left is at level-0 pixel (`x`, `y`),
    /// as RGB8, composited over white (OpenSlide gives transparent pixels outside the scanned
    /// area).
    pub fn read_rgb(
        &self,
        level: usize,
        x: i64,
        y: i64,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, SlideError> {
        if level >= self.levels.len() {
            return Err(self.invalid(&format!("no level {level}")));
        }
        let n = width as usize * height as usize;
        let mut argb = vec![0u32; n];
        if n > 0 {
            // SAFETY: a live handle, a level below the count and a buffer of w*h pixels.
            unsafe {
                (self.api.read_region)(
                    self.handle,
                    argb.as_mut_ptr(),
                    x,
                    y,
                    level as i32,
                    width as i64,
                    height as i64,
                )
            };
            self.check()?;
        }
        Ok(argb_to_rgb(&argb))
    }
}

/// What the content of a file OpenSlide does not open looks like, for the message.
fn content_of(path: &Path) -> String {
    use std::io::Read;
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    match super::tiff::sniff(&head[..n]) {
        k @ (super::tiff::Kind::Tiff | super::tiff::Kind::BigTiff) => format!(
            "{}, but not one of a format OpenSlide knows: truncated, not tiled, or with no image",
            k.describe()
        ),
        super::tiff::Kind::Other => "its content is no image format idc or OpenSlide knows".into(),
        k => format!("{}, not a whole-slide image", k.describe()),
    }
}

/// OpenSlide's premultiplied ARGB as RGB over white.
fn argb_to_rgb(argb: &[u32]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(argb.len() * 3);
    for &p in argb {
        let a = p >> 24;
        let (r, g, b) = ((p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff);
        if a == 255 {
            rgb.extend_from_slice(&[r as u8, g as u8, b as u8]);
        } else {
            // Premultiplied: colour + white * (1 - alpha).
            let over = |c: u32| (c + (255 - a)).min(255) as u8;
            rgb.extend_from_slice(&[over(r), over(g), over(b)]);
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn premultiplied_argb_is_composited_over_white() {
        let px = [0xff_10_20_30, 0x00_00_00_00, 0x80_40_00_00];
        assert_eq!(
            argb_to_rgb(&px),
            vec![0x10, 0x20, 0x30, 255, 255, 255, 0x40 + 127, 127, 127]
        );
    }

    #[test]
    fn a_file_that_is_no_slide_is_refused_by_name() {
        if api().is_err() {
            eprintln!("OpenSlide is not installed: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.svs");
        std::fs::write(&path, b"just some text, not a slide").unwrap();
        let e = Slide::open(&path).unwrap_err();
        assert!(matches!(e, SlideError::NotASlide { .. }), "{e}");
        assert!(e.to_string().contains("notes.svs"), "{e}");
        assert_eq!(Slide::detect_vendor(&path).unwrap(), None);
    }
}
