//! Decoding one PNG patch into 50x50 RGB pixels, whatever PNG flavour the file uses.

use crate::{PATCH_BYTES, PATCH_SIZE};
use png::{ColorType, Transformations};

pub use super::manifest::Undersized;

/// The value padding pixels get: white, like the glass around the tissue.
pub const PAD_VALUE: u8 = 255;

/// A decoded patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// 50x50x3 HWC RGB.
    pub pixels: Vec<u8>,
    /// Size of the image in the file.
    pub width: u32,
    pub height: u32,
    /// Whether padding was added.
    pub padded: bool,
}

/// Why a file is not a usable patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a readable PNG: {0}")]
    Corrupt(String),
    #[error("image is {width}x{height}, larger than 50x50")]
    TooLarge { width: u32, height: u32 },
    #[error("image is {width}x{height}, smaller than 50x50 (skipped by --skip-undersized)")]
    Undersized { width: u32, height: u32 },
    #[error("image is empty (0 pixels)")]
    Empty,
}

/// Decodes PNG bytes into a 50x50 RGB patch: grayscale is replicated, alpha dropped, palettes
/// expanded, 16-bit reduced to 8-bit.
pub fn decode_png(bytes: &[u8], undersized: Undersized) -> Result<Patch, DecodeError> {
    let corrupt = |e: png::DecodingError| DecodeError::Corrupt(e.to_string());
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    if width == 0 || height == 0 {
        return Err(DecodeError::Empty);
    }
    if width as usize > PATCH_SIZE || height as usize > PATCH_SIZE {
        return Err(DecodeError::TooLarge { width, height });
    }
    let small = (width as usize) < PATCH_SIZE || (height as usize) < PATCH_SIZE;
    if small && undersized == Undersized::Skip {
        return Err(DecodeError::Undersized { width, height });
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DecodeError::Corrupt("image too large".into()))?;
    let mut raw = vec![0u8; size];
    let frame = reader.next_frame(&mut raw).map_err(corrupt)?;
    let channels = match frame.color_type {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => return Err(DecodeError::Corrupt("palette was not expanded".into())),
    };
    let (w, h) = (width as usize, height as usize);
    let row_in = frame.line_size;
    let mut pixels = if small {
        vec![PAD_VALUE; PATCH_BYTES]
    } else {
        vec![0u8; PATCH_BYTES]
    };
    for y in 0..h {
        let src = &raw[y * row_in..y * row_in + w * channels];
        let dst = &mut pixels[y * PATCH_SIZE * 3..y * PATCH_SIZE * 3 + w * 3];
        match channels {
            3 => dst.copy_from_slice(src),
            4 => {
                for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(4)) {
                    d.copy_from_slice(&s[..3]);
                }
            }
            c => {
                for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(c)) {
                    d.fill(s[0]);
                }
            }
        }
    }
    Ok(Patch {
        pixels,
        width,
        height,
        padded: small,
    })
}

/// Encodes 8-bit pixels as a PNG (the synthetic generator, report pages, tests).
pub fn encode_png(pixels: &[u8], width: u32, height: u32, color: ColorType) -> Vec<u8> {
    let mut out = Vec::with_capacity(pixels.len() / 2 + 128);
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("writing to a Vec cannot fail");
        w.write_image_data(pixels)
            .expect("pixel buffer matches the header");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(w: u32, h: u32) -> Vec<u8> {
        (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect()
    }

    #[test]
    fn decodes_rgb_exactly() {
        let px = rgb(50, 50);
        let p = decode_png(&encode_png(&px, 50, 50, ColorType::Rgb), Undersized::Pad).unwrap();
        assert_eq!(p.pixels, px);
        assert!(!p.padded);
    }

    #[test]
    fn converts_gray_and_rgba() {
        let gray: Vec<u8> = (0..2500).map(|i| (i % 256) as u8).collect();
        let p = decode_png(
            &encode_png(&gray, 50, 50, ColorType::Grayscale),
            Undersized::Pad,
        )
        .unwrap();
        assert_eq!(&p.pixels[3 * 300..3 * 301], &[44, 44, 44]);
        let rgba: Vec<u8> = (0..2500 * 4).map(|i| (i % 253) as u8).collect();
        let p = decode_png(&encode_png(&rgba, 50, 50, ColorType::Rgba), Undersized::Pad).unwrap();
        assert_eq!(&p.pixels[0..6], &[0, 1, 2, 4, 5, 6]);
    }

    #[test]
    fn pads_or_skips_undersized() {
        let px = rgb(32, 50);
        let png = encode_png(&px, 32, 50, ColorType::Rgb);
        let p = decode_png(&png, Undersized::Pad).unwrap();
        assert!(p.padded);
        assert_eq!((p.width, p.height), (32, 50));
        assert_eq!(&p.pixels[..96], &px[..96], "row 0 kept at the left");
        assert!(
            p.pixels[96..150].iter().all(|&v| v == PAD_VALUE),
            "row 0 padded on the right"
        );
        assert_eq!(&p.pixels[150..150 + 96], &px[96..192]);
        assert_eq!(
            decode_png(&png, Undersized::Skip),
            Err(DecodeError::Undersized {
                width: 32,
                height: 50
            })
        );
    }

    #[test]
    fn rejects_bad_files() {
        let png = encode_png(&rgb(50, 50), 50, 50, ColorType::Rgb);
        assert!(matches!(
            decode_png(&png[..png.len() / 2], Undersized::Pad),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            decode_png(b"", Undersized::Pad),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            decode_png(b"\x89PNG garbage", Undersized::Pad),
            Err(DecodeError::Corrupt(_))
        ));
        let big = encode_png(&rgb(60, 50), 60, 50, ColorType::Rgb);
        assert_eq!(
            decode_png(&big, Undersized::Pad),
            Err(DecodeError::TooLarge {
                width: 60,
                height: 50
            })
        );
    }
}
