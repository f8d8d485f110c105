//! Printed tickets (`ticketing wallet print`): one A4 PDF page drawn by hand (the QR code as
//! vector squares, so it prints sharp at any size; text in the PDF's built-in Helvetica, so
//! nothing is embedded), or a PNG of the code alone.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use qrcode::{Color, QrCode};

/// What the page says beside the code. Never a name or a serial: the code is the ticket.
pub(crate) struct Page<'a> {
    pub(crate) product: &'a str,
    pub(crate) valid_from: String,
    pub(crate) valid_until: String,
}

/// A4 in PDF points.
const WIDTH: f64 = 595.0;
const HEIGHT: f64 = 842.0;
/// The code's side, quiet zone included: 80 mm.
const CODE_SIDE: f64 = 80.0 / 25.4 * 72.0;

/// The code alone, at least 600 px, with its quiet zone.
pub(crate) fn png(code: &QrCode) -> Result<Vec<u8>> {
    let image = code
        .render::<image::Luma<u8>>()
        .min_dimensions(600, 600)
        .build();
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .context("encoding the PNG")?;
    Ok(out.into_inner())
}

/// The page: title, the code, its rules.
pub(crate) fn pdf(code: &QrCode, page: &Page<'_>) -> Vec<u8> {
    let mut content = String::new();
    let title = format!("{} ticket (printed)", capitalised(page.product));
    text(&mut content, "F2", 22.0, 72.0, HEIGHT - 90.0, &title);
    text(
        &mut content,
        "F1",
        12.0,
        72.0,
        HEIGHT - 115.0,
        &format!(
            "First use between {} and {}.",
            page.valid_from, page.valid_until
        ),
    );
    let top = HEIGHT - 140.0;
    squares(
        &mut content,
        code,
        (WIDTH - CODE_SIDE) / 2.0,
        top - CODE_SIDE,
    );
    let mut y = top - CODE_SIDE - 40.0;
    for line in [
        "Show this code at the gate or to the conductor. It is accepted once: the first",
        "scan uses it up, for one ride without transfers.",
        "",
        "A printed code cannot change like the one in the app, so a copy or a photo of it",
        "rides in its place: keep it like cash. It carries no name; nobody can tell who",
        "bought it.",
    ] {
        text(&mut content, "F1", 11.0, 72.0, y, line);
        y -= 16.0;
    }
    document(&content)
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// One line of text at (x, y) from the bottom left. Characters outside printable ASCII become
/// `?` (the built-in fonts' encoding is not UTF-8).
fn text(out: &mut String, font: &str, size: f64, x: f64, y: f64, line: &str) {
    let mut escaped = String::with_capacity(line.len());
    for ch in line.chars() {
        match ch {
            '(' | ')' | '\\' => {
                escaped.push('\\');
                escaped.push(ch);
            }
            ' '..='~' => escaped.push(ch),
            _ => escaped.push('?'),
        }
    }
    let _ = writeln!(
        out,
        "BT /{font} {size} Tf {x:.2} {y:.2} Td ({escaped}) Tj ET"
    );
}

/// The code's dark modules as filled squares, its quiet zone (4 modules) around them, in a
/// square of side [`CODE_SIDE`] whose bottom left corner is (x, y).
fn squares(out: &mut String, code: &QrCode, x: f64, y: f64) {
    let n = code.width();
    let quiet = 4;
    let module = CODE_SIDE / (n + 2 * quiet) as f64;
    let colors = code.to_colors();
    out.push_str("0 0 0 rg\n");
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (row, col) = (i / n, i % n);
        let left = x + (col + quiet) as f64 * module;
        // PDF's y grows upwards; the code's rows go down.
        let bottom = y + CODE_SIDE - (row + quiet + 1) as f64 * module;
        let _ = writeln!(out, "{left:.3} {bottom:.3} {module:.3} {module:.3} re");
    }
    out.push_str("f\n");
}

/// A one-page PDF around a content stream: catalog, pages, page, two fonts, the stream, and
/// the cross-reference table of their byte offsets.
fn document(content: &str) -> Vec<u8> {
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {WIDTH} {HEIGHT}] \
             /Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>"
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>".to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{content}endstream",
            content.len()
        ),
    ];
    let mut out = String::from("%PDF-1.4\n");
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        let _ = write!(out, "{} 0 obj\n{body}\nendobj\n", i + 1);
    }
    let xref = out.len();
    let _ = write!(out, "xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for offset in offsets {
        let _ = writeln!(out, "{offset:010} 00000 n ");
    }
    let _ = write!(
        out,
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    );
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pdf_is_well_formed_and_draws_every_dark_module() {
        let code = QrCode::new(b"TK1:EXAMPLE").unwrap();
        let page = Page {
            product: "single",
            valid_from: "2026-12-01 00:00 UTC".into(),
            valid_until: "2027-01-01 00:00 UTC".into(),
        };
        let bytes = pdf(&code, &page);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("%PDF-1.4\n") && text.ends_with("%%EOF\n"));
        // Every cross-reference entry points at its object.
        let xref_at: usize = text
            .rsplit("startxref\n")
            .next()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(text[xref_at..].starts_with("xref\n"));
        for (i, line) in text[xref_at..].lines().skip(3).take(6).enumerate() {
            let offset: usize = line[..10].parse().unwrap();
            assert!(
                text[offset..].starts_with(&format!("{} 0 obj", i + 1)),
                "{line}"
            );
        }
        let dark = code
            .to_colors()
            .iter()
            .filter(|c| **c == Color::Dark)
            .count();
        assert_eq!(text.matches(" re\n").count(), dark);
        // The stream's length is what it says.
        let start = text.find("stream\n").unwrap() + 7;
        let end = text.find("endstream").unwrap();
        assert!(text.contains(&format!("/Length {}", end - start)));
        assert!(text.contains("(Single ticket \\(printed\\)) Tj"));
    }
}
