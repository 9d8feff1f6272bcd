//! Decompression bombs: small files (≤ 2 MB) of every supported format declaring a huge image.
//! Each is refused from its header, before a decoder allocates the image, with a one-line reason,
//! and `classify`, or `serve` answering `POST /classify`, stays within 200 MB of memory (before the
//! size check, a 16384×16384 PNG took either to 1.9 GB). A truncated JPEG is refused too: decoders
//! fill the missing data with grey.

mod common;

use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::process::Stdio;

use common::*;
use image::{ImageEncoder, RgbImage};

/// Peak memory allowed for `classify` on one bomb.
const MAX_RSS_KB: i64 = 200 * 1024;
const SIDE: u32 = 16_384;

fn small_rgb() -> RgbImage {
    RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 128]))
}

/// A 16384×16384 RGBA PNG of zeros: 1 GiB of pixels in about 1 MB.
fn png_bomb() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&SIDE.to_be_bytes());
    ihdr.extend_from_slice(&SIDE.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let row = vec![0u8; 1 + SIDE as usize * 4];
    for _ in 0..SIDE {
        z.write_all(&row).unwrap();
    }
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A 16×16 GIF whose logical screen says 16384×16384.
fn gif_bomb() -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut out)
        .encode(small_rgb().as_raw(), 16, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    out[6..8].copy_from_slice(&(SIDE as u16).to_le_bytes());
    out[8..10].copy_from_slice(&(SIDE as u16).to_le_bytes());
    out
}

/// A 16384×16384 run-length-encoded BMP whose data is just "end of bitmap".
fn bmp_bomb() -> Vec<u8> {
    let data = [0u8, 1];
    let offset = 14 + 40 + 8;
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&((offset + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(offset as u32).to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&(SIDE as i32).to_le_bytes());
    out.extend_from_slice(&(SIDE as i32).to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // BI_RLE8
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&2835u32.to_le_bytes());
    out.extend_from_slice(&2835u32.to_le_bytes());
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 0]);
    out.extend_from_slice(&data);
    out
}

/// An animated WebP on a 16384×16384 canvas whose one frame is 16×16.
fn webp_bomb() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(kind);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
    }
    let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
    let mut small = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut small)
        .write_image(small_rgb().as_raw(), 16, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    let vp8l = &small[12..]; // the VP8L chunk, header and all
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x02, 0, 0, 0];
    vp8x.extend(u24(SIDE - 1));
    vp8x.extend(u24(SIDE - 1));
    chunk(&mut body, b"VP8X", &vp8x);
    chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]);
    let mut anmf = Vec::new();
    anmf.extend(u24(0));
    anmf.extend(u24(0));
    anmf.extend(u24(15));
    anmf.extend(u24(15));
    anmf.extend(u24(100));
    anmf.push(0);
    anmf.extend_from_slice(vp8l);
    chunk(&mut body, b"ANMF", &anmf);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// A 16×16 baseline JPEG whose frame header says 65535×65535.
fn jpeg_bomb() -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut out)
        .write_image(small_rgb().as_raw(), 16, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    let sof = out.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    out[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    out
}

/// `classify FILE`: its exit code, stderr and peak resident memory in KiB.
// The child is reaped by wait4 (for its own peak memory), not by std's wait.
#[allow(clippy::zombie_processes)]
fn classify_peak(file: &Path) -> (Option<i32>, String, i64) {
    let mut child = edge_command()
        .args(["classify", s(file)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value to be overwritten; the pid is our own child,
    // which std has not reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, err, usage.ru_maxrss)
}

/// One bomb of each format: (file name, bytes, the size its refusal names).
fn bombs() -> [(&'static str, Vec<u8>, &'static str); 5] {
    [
        ("bomb.png", png_bomb(), "16384x16384 (268 megapixels)"),
        ("bomb.gif", gif_bomb(), "16384x16384 (268 megapixels)"),
        ("bomb.bmp", bmp_bomb(), "16384x16384 (268 megapixels)"),
        ("bomb.webp", webp_bomb(), "16384x16384 (268 megapixels)"),
        ("bomb.jpg", jpeg_bomb(), "65535x65535 (4295 megapixels)"),
    ]
}

#[test]
fn decompression_bombs_are_refused_from_the_header_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes, size) in bombs() {
        assert!(bytes.len() <= 2_000_000, "{name}: {} bytes", bytes.len());
        // The file is an image its decoder reads: its header alone says how large.
        let (w, h) = image::ImageReader::new(Cursor::new(&bytes))
            .with_guessed_format()
            .unwrap()
            .into_dimensions()
            .unwrap();
        assert!(w as u64 * h as u64 >= 16_384 * 16_384, "{name}: {w}x{h}");
        let path = tmp.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let (code, err, peak_kb) = classify_peak(&path);
        eprintln!(
            "{name}: {} bytes, exit {code:?}, peak RSS {peak_kb} KiB: {}",
            bytes.len(),
            err.trim()
        );
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!(
                "{name}: image is {size}, over the 64-megapixel limit"
            )),
            "{name}: {err}"
        );
        assert!(peak_kb <= MAX_RSS_KB, "{name}: peak RSS {peak_kb} KiB");
    }
}

/// The first 5 KB of a 131 KB hymenoptera JPEG: the decoders return the top rows and grey below.
fn truncated_jpeg(dir: &Path) -> std::path::PathBuf {
    let whole = std::fs::read(hymenoptera_train_image("bees", 0)).unwrap();
    assert!(whole.len() > 20_000);
    let path = dir.join("cut.jpg");
    std::fs::write(&path, &whole[..5_000]).unwrap();
    path
}

#[test]
fn truncated_jpegs_are_refused_by_classify() {
    let tmp = tempfile::tempdir().unwrap();
    let cut = truncated_jpeg(tmp.path());
    let o = edge(&["classify", s(&cut)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cut.jpg: truncated or corrupt JPEG"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
}

/// The same bombs posted to a running service's `POST /classify` (as any client on the board may,
/// no token needed on loopback): each answered 400 with the size refusal, and the service's peak
/// memory (its VmHWM, frame loop and all) within the same 200 MB. Before the size check a PNG bomb
/// took `serve` to 1.9 GB.
#[cfg(feature = "http")]
#[test]
fn bombs_posted_to_serve_are_refused_in_bounded_memory() {
    use common::served::{http, Served};
    let val = shared().join("datasets/hymenoptera/val");
    let mut served = Served::start(&[
        "--head",
        s(shared_head()),
        "--source",
        s(&val),
        "--fps",
        "5",
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = served.addr();
    served.wait(
        "a first frame classified",
        std::time::Duration::from_secs(120),
        |_| http(&addr, "GET", "/latest", b"").0 == 200,
    );
    for (name, bytes, size) in bombs() {
        let (status, body) = http(&addr, "POST", "/classify", &bytes);
        eprintln!("{name}: {status} {}", body.trim());
        assert_eq!(status, 400, "{name}: {body}");
        assert!(
            body.contains(&format!("image is {size}, over the 64-megapixel limit")),
            "{name}: {body}"
        );
    }
    // The service still classifies what it should.
    let bee = std::fs::read(val.join("bees/10870992_eebeeb3a12.jpg")).unwrap();
    let (status, body) = http(&addr, "POST", "/classify", &bee);
    assert_eq!(status, 200, "{body}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", served.child.id())).unwrap();
    let peak_kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    eprintln!("serve peak RSS {peak_kb} KiB");
    assert!(peak_kb <= MAX_RSS_KB, "serve: peak RSS {peak_kb} KiB");
}
