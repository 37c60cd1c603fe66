//! QR codes for invitations: a module matrix (ISO/IEC 18004 via the `qrcode` crate),
//! rendered to a terminal with Unicode half blocks or to a PNG image. No I/O: both return
//! bytes/strings for the caller to print or write.

use crate::error::{Error, Result};

/// Modules of quiet zone around the code. The standard asks for 4; terminals get 2 (the
/// terminal's own background margin adds to it) to fit a typical URL in 80 columns.
const TERMINAL_QUIET: usize = 2;
const PNG_QUIET: usize = 4;

/// A QR code's dark/light modules, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrMatrix {
    width: usize,
    dark: Vec<bool>,
}

impl QrMatrix {
    /// Encode `data` (byte mode, error correction level L: the link is long and a screen
    /// or print is clean, so capacity matters more than damage tolerance).
    ///
    /// # Errors
    /// [`Error::Protocol`] if `data` is too long for any QR version (about 2.9 KB).
    pub fn encode(data: &[u8]) -> Result<Self> {
        let code =
            qrcode::QrCode::with_error_correction_level(data, qrcode::EcLevel::L).map_err(|e| {
                Error::Protocol {
                    protocol: "qr code",
                    reason: e.to_string(),
                }
            })?;
        let width = code.width();
        let dark = code
            .to_colors()
            .into_iter()
            .map(|c| c == qrcode::Color::Dark)
            .collect();
        Ok(Self { width, dark })
    }

    /// Modules per side (without quiet zone).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Whether module (x, y) is dark; outside the code (quiet zone) is light.
    pub fn is_dark(&self, x: isize, y: isize) -> bool {
        if x < 0 || y < 0 {
            return false;
        }
        let (x, y) = (x as usize, y as usize);
        if x >= self.width || y >= self.width {
            return false;
        }
        self.dark.get(y * self.width + x).copied().unwrap_or(false)
    }

    /// Terminal rendering: two module rows per text line with `▀`, `▄`, `█` and space,
    /// dark modules drawn as the terminal's background colour is assumed dark: the
    /// *light* modules are printed as blocks, so the code shows dark-on-light on a dark
    /// terminal and scanners read it. `invert` flips that for light terminals.
    pub fn to_terminal(&self, invert: bool) -> String {
        let q = TERMINAL_QUIET as isize;
        let n = self.width as isize;
        let mut out = String::new();
        let mut y = -q;
        while y < n + q {
            for x in -q..n + q {
                // "lit" = printed as a block.
                let lit = |yy: isize| self.is_dark(x, yy) == invert;
                let top = lit(y);
                let bottom = if y + 1 < n + q { lit(y + 1) } else { invert };
                out.push(match (top, bottom) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
            out.push('\n');
            y += 2;
        }
        out
    }

    /// PNG rendering: 8-bit greyscale, `scale` pixels per module, 4-module quiet zone.
    ///
    /// # Errors
    /// [`Error::Protocol`] if the PNG encoder fails (it does not for valid sizes) or the
    /// image would be absurdly large (scale > 64).
    pub fn to_png(&self, scale: usize) -> Result<Vec<u8>> {
        let err = |e: &dyn std::fmt::Display| Error::Protocol {
            protocol: "qr code",
            reason: e.to_string(),
        };
        if scale == 0 || scale > 64 {
            return Err(err(&"scale must be 1..=64"));
        }
        let side = (self.width + 2 * PNG_QUIET) * scale;
        let side_u32 = u32::try_from(side).map_err(|e| err(&e))?;
        let mut pixels = Vec::with_capacity(side * side);
        for py in 0..side {
            for px in 0..side {
                let x = (px / scale) as isize - PNG_QUIET as isize;
                let y = (py / scale) as isize - PNG_QUIET as isize;
                pixels.push(if self.is_dark(x, y) { 0u8 } else { 255u8 });
            }
        }
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, side_u32, side_u32);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| err(&e))?;
            w.write_image_data(&pixels).map_err(|e| err(&e))?;
            w.finish().map_err(|e| err(&e))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finder_patterns_and_sizes() {
        let m = QrMatrix::encode(b"https://didcomm.invalid/oob?_oob=eyJ0eXBlIjoi").unwrap();
        // Version v has 17 + 4v modules per side.
        assert_eq!((m.width() - 17) % 4, 0);
        // Top-left finder pattern: dark 7x7 border, light ring, dark 3x3 core.
        for i in 0..7 {
            assert!(m.is_dark(i, 0) && m.is_dark(0, i) && m.is_dark(i, 6) && m.is_dark(6, i));
        }
        assert!(!m.is_dark(1, 1) && m.is_dark(3, 3));
        let t = m.to_terminal(false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), (m.width() + 2 * TERMINAL_QUIET).div_ceil(2));
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == m.width() + 2 * TERMINAL_QUIET));
        let png = m.to_png(4).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn too_long_is_an_error() {
        assert!(QrMatrix::encode(&[b'a'; 5000]).is_err());
    }
}
