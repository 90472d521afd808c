//! Whole-slide images: reading them, their scale, their tissue, the grid of patches over it,
//! and what one slide's prediction writes.
//!
//! Everything here builds without the `controller` feature, for both binaries: OpenSlide,
//! loaded at run time ([`openslide`]); TIFF sniffing and resolution tags ([`tiff`]); a slide's
//! resolution and the level read ([`scale`]); the tissue mask of a thumbnail ([`tissue`]); the
//! patch grid and resampling ([`grid`]); IDC regions as polygons ([`regions`]); a slide job's
//! spec ([`job`]); and a slide's output files ([`outputs`]). [`Image`] and [`Mask`] are the
//! rasters they share.

pub mod grid;
pub mod job;
pub mod openslide;
pub mod outputs;
pub mod regions;
pub mod scale;
pub mod tiff;
pub mod tissue;

/// White: a new [`Image`]'s pixels, and what fills a missing pixel when one is written.
const WHITE: [u8; 3] = [255, 255, 255];

/// An RGB image, 8 bits a channel, row-major: pixel (x, y) is `rgb[3 * (y * width + x)..][..3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Image {
    /// A white image of `width` x `height`.
    pub fn new(width: u32, height: u32) -> Self {
        Image {
            width,
            height,
            rgb: vec![255; width as usize * height as usize * 3],
        }
    }

    /// The colour of pixel (x, y); white outside the image (or past the end of `rgb`).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        if x >= self.width || y >= self.height {
            return WHITE;
        }
        let i = 3 * (y as usize * self.width as usize + x as usize);
        match self.rgb.get(i..i + 3) {
            Some(p) => [p[0], p[1], p[2]],
            None => WHITE,
        }
    }

    /// Sets pixel (x, y) to `rgb`; a pixel outside the image is left alone.
    pub fn set_pixel(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        if x >= self.width || y >= self.height {
            return;
        }
        let i = 3 * (y as usize * self.width as usize + x as usize);
        if let Some(p) = self.rgb.get_mut(i..i + 3) {
            p.copy_from_slice(&rgb);
        }
    }

    /// The image as a PNG (RGB, 8 bits). `rgb` shorter than the size says is padded with white,
    /// longer is cut; an image without pixels is written as one white pixel, as PNG has no
    /// empty images.
    pub fn to_png(&self) -> Vec<u8> {
        encode_png(self.width, self.height, png::ColorType::Rgb, &self.rgb, 255)
    }
}

/// A binary raster (a tissue mask), row-major: pixel (x, y) is `bits[y * width + x]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub bits: Vec<bool>,
}

impl Mask {
    /// An empty (all unset) mask of `width` x `height`.
    pub fn new(width: u32, height: u32) -> Self {
        Mask {
            width,
            height,
            bits: vec![false; width as usize * height as usize],
        }
    }

    /// Whether pixel (x, y) is set; a pixel outside the mask is not.
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.width
            && y < self.height
            && self
                .bits
                .get(y as usize * self.width as usize + x as usize)
                .copied()
                .unwrap_or(false)
    }

    /// How many pixels are set.
    pub fn count(&self) -> u64 {
        self.bits.iter().filter(|&&b| b).count() as u64
    }

    /// The mask as a gray PNG: 255 where set, 0 elsewhere (size as [`Image::to_png`] says).
    pub fn to_png(&self) -> Vec<u8> {
        let gray: Vec<u8> = self.bits.iter().map(|&b| if b { 255 } else { 0 }).collect();
        encode_png(self.width, self.height, png::ColorType::Grayscale, &gray, 0)
    }

    /// The fraction of the rectangle [x0, x1) x [y0, y1), in mask pixel coordinates (fractional),
    /// that set pixels cover: each set pixel counts by the area it shares with the rectangle, and
    /// the part of the rectangle outside the mask counts as unset. 0 for an empty rectangle (or
    /// one with a coordinate that is not finite).
    pub fn fraction_in(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> f64 {
        let area = (x1 - x0) * (y1 - y0);
        if !(area.is_finite() && x1 > x0 && y1 > y0) {
            return 0.0;
        }
        // The pixels the rectangle touches, clamped to the mask.
        let span = |lo: f64, hi: f64, n: u32| {
            let a = lo.max(0.0).floor().min(n as f64) as u32;
            let b = hi.min(n as f64).ceil().max(0.0) as u32;
            (a, b)
        };
        let (cx0, cx1) = span(x0, x1, self.width);
        let (cy0, cy1) = span(y0, y1, self.height);
        let overlap =
            |i: u32, lo: f64, hi: f64| (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
        let mut covered = 0.0;
        for y in cy0..cy1 {
            let h = overlap(y, y0, y1);
            let row: f64 = (cx0..cx1)
                .filter(|&x| self.get(x, y))
                .map(|x| overlap(x, x0, x1))
                .sum();
            covered += row * h;
        }
        (covered / area).clamp(0.0, 1.0)
    }
}

/// `pixels` (`channels` bytes a pixel) as an 8-bit PNG of `width` x `height`: padded with `fill`
/// or cut to that size; one `fill` pixel when the size is empty.
fn encode_png(width: u32, height: u32, color: png::ColorType, pixels: &[u8], fill: u8) -> Vec<u8> {
    let channels = color.samples();
    let (width, height) = if width == 0 || height == 0 {
        (1, 1)
    } else {
        (width, height)
    };
    let len = width as usize * height as usize * channels;
    let mut data = pixels[..len.min(pixels.len())].to_vec();
    data.resize(len, fill);
    let mut out = Vec::with_capacity(len / 2 + 128);
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    // Both steps fail only on a size the header cannot hold or a buffer not matching it, which
    // the lines above rule out; an empty result would say so without a panic.
    let written = enc.write_header().and_then(|mut w| {
        w.write_image_data(&data)?;
        w.finish()
    });
    if written.is_err() {
        return Vec::new();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png_bytes: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
        let mut r = png::Decoder::new(std::io::Cursor::new(png_bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, info.color_type, buf)
    }

    #[test]
    fn image_pixels_and_png() {
        let mut im = Image::new(3, 2);
        assert_eq!(im.pixel(2, 1), [255, 255, 255]);
        im.set_pixel(2, 1, [1, 2, 3]);
        im.set_pixel(9, 9, [0, 0, 0]);
        assert_eq!(im.pixel(2, 1), [1, 2, 3]);
        assert_eq!(im.pixel(3, 0), WHITE);
        let (w, h, c, px) = decode(&im.to_png());
        assert_eq!((w, h, c), (3, 2, png::ColorType::Rgb));
        assert_eq!(px, im.rgb);
        // A short buffer is padded, an empty image is one pixel: never a panic.
        let short = Image {
            width: 2,
            height: 1,
            rgb: vec![7, 7, 7],
        };
        assert_eq!(decode(&short.to_png()).3, vec![7, 7, 7, 255, 255, 255]);
        assert_eq!(decode(&Image::new(0, 5).to_png()).0, 1);
    }

    #[test]
    fn mask_png_and_count() {
        let mut m = Mask::new(2, 2);
        m.bits[1] = true;
        assert!(m.get(1, 0) && !m.get(0, 0) && !m.get(5, 0));
        assert_eq!(m.count(), 1);
        let (w, h, c, px) = decode(&m.to_png());
        assert_eq!((w, h, c), (2, 2, png::ColorType::Grayscale));
        assert_eq!(px, vec![0, 255, 0, 0]);
    }

    #[test]
    fn fraction_weighs_pixels_by_overlap() {
        // Left column set: x in [0, 1).
        let mut m = Mask::new(4, 4);
        for y in 0..4 {
            m.bits[y * 4] = true;
        }
        assert_eq!(m.fraction_in(0.0, 0.0, 1.0, 4.0), 1.0);
        assert_eq!(m.fraction_in(0.0, 0.0, 2.0, 2.0), 0.5);
        assert_eq!(m.fraction_in(0.5, 1.25, 1.5, 1.75), 0.5);
        assert_eq!(m.fraction_in(1.0, 0.0, 4.0, 4.0), 0.0);
        // Half the rectangle lies left of the mask, which counts as unset.
        assert_eq!(m.fraction_in(-1.0, 0.0, 1.0, 4.0), 0.5);
        assert_eq!(m.fraction_in(-3.0, -3.0, -1.0, -1.0), 0.0);
        assert_eq!(m.fraction_in(10.0, 10.0, 12.0, 12.0), 0.0);
        // Empty and nonsense rectangles.
        assert_eq!(m.fraction_in(1.0, 1.0, 1.0, 2.0), 0.0);
        assert_eq!(m.fraction_in(2.0, 0.0, 1.0, 1.0), 0.0);
        assert_eq!(m.fraction_in(f64::NAN, 0.0, 1.0, 1.0), 0.0);
        assert_eq!(m.fraction_in(0.0, 0.0, f64::INFINITY, 1.0), 0.0);
        let full = Mask {
            width: 3,
            height: 3,
            bits: vec![true; 9],
        };
        let f = full.fraction_in(0.3, 0.7, 2.9, 2.2);
        assert!((f - 1.0).abs() < 1e-12, "{f}");
    }
}
