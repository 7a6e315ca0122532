//! GGUF container parsing and block dequantization against hand-built files and blocks, and
//! the named errors for truncated files, foreign files and unknown tensor types.

mod common;

use common::*;
use ferroq::checkpoint::gguf::dequant::{dequantize, GgmlType};
use ferroq::checkpoint::gguf::{GgufFile, Value};
use ferroq::Error;
use half::{bf16, f16};

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn deq(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize(ty, bytes, &mut out).expect("dequantize");
    out
}

#[test]
fn q4_0_block() {
    // d = 0.5; nibble j (low) = j, high = 15 - j; value = (q - 8) * d
    let mut b = h(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = deq(GgmlType::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 0.5);
    }
}

#[test]
fn q4_1_block() {
    let mut b = h(0.25).to_vec();
    b.extend(h(-1.5));
    b.extend((0..16u8).map(|j| (j ^ 5) | (j << 4)));
    let y = deq(GgmlType::Q4_1, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], (j ^ 5) as f32 * 0.25 - 1.5);
        assert_eq!(y[j + 16], j as f32 * 0.25 - 1.5);
    }
}

#[test]
fn q5_0_and_q5_1_blocks() {
    // fifth bits: element j (j < 16) takes bit j of qh, element j + 16 takes bit j + 16
    let qh: u32 = 0b1010_0000_1111_0000_0101_0101_1100_0011;
    let qs: Vec<u8> = (0..16u8)
        .map(|j| (j * 3 % 16) | ((j * 7 % 16) << 4))
        .collect();
    let want = |j: usize| -> (u32, u32) {
        let lo = (qs[j] & 15) as u32 | (((qh >> j) & 1) << 4);
        let hi = (qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
        (lo, hi)
    };
    let mut b0 = h(2.0).to_vec();
    b0.extend(qh.to_le_bytes());
    b0.extend(&qs);
    let y = deq(GgmlType::Q5_0, &b0, 32);
    let mut b1 = h(2.0).to_vec();
    b1.extend(h(0.5));
    b1.extend(qh.to_le_bytes());
    b1.extend(&qs);
    let y1 = deq(GgmlType::Q5_1, &b1, 32);
    for j in 0..16 {
        let (lo, hi) = want(j);
        assert_eq!(y[j], (lo as f32 - 16.0) * 2.0, "q5_0 element {j}");
        assert_eq!(
            y[j + 16],
            (hi as f32 - 16.0) * 2.0,
            "q5_0 element {}",
            j + 16
        );
        assert_eq!(y1[j], lo as f32 * 2.0 + 0.5);
        assert_eq!(y1[j + 16], hi as f32 * 2.0 + 0.5);
    }
}

#[test]
fn q8_0_two_blocks() {
    let mut b = Vec::new();
    for (d, base) in [(0.125f32, -100i32), (3.0, 7)] {
        b.extend(h(d));
        b.extend((0..32).map(|j| (base + j * 3) as i8 as u8));
    }
    let y = deq(GgmlType::Q8_0, &b, 64);
    for j in 0..32 {
        assert_eq!(y[j], (-100 + j as i32 * 3) as f32 * 0.125);
        assert_eq!(y[32 + j], (7 + j as i32 * 3) as i8 as f32 * 3.0);
    }
}

#[test]
fn float_types() {
    let vals = [1.5f32, -2.25, 0.0, 65504.0];
    let b32: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(deq(GgmlType::F32, &b32, 4), vals);
    let b16: Vec<u8> = vals.iter().flat_map(|&v| h(v)).collect();
    assert_eq!(deq(GgmlType::F16, &b16, 4), vals);
    let bb: Vec<u8> = vals[..3]
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(deq(GgmlType::BF16, &bb, 3), vals[..3]);
}

#[test]
fn q4_k_block() {
    // d = 1, dmin = 0.5; 6-bit scale/min pairs: sub-blocks 0..3 in the low 6 bits of bytes 0..7,
    // 4..7 split between the nibbles of bytes 8..11 and the top 2 bits of bytes 0..7.
    let sc = [1u8, 2, 3, 4, 33, 40, 50, 63];
    let mn = [0u8, 1, 2, 3, 17, 20, 45, 62];
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    let qs: Vec<u8> = (0..128u32)
        .map(|i| ((i * 5) % 16) as u8 | ((((i * 11) % 16) as u8) << 4))
        .collect();
    let mut b = h(1.0).to_vec();
    b.extend(h(0.5));
    b.extend(s);
    b.extend(&qs);
    let y = deq(GgmlType::Q4K, &b, 256);
    #[allow(clippy::needless_range_loop)]
    for i in 0..256 {
        let (chunk, within) = (i / 64, i % 64);
        let (sub, l) = (2 * chunk + within / 32, within % 32);
        let byte = qs[chunk * 32 + l];
        let q = if within < 32 { byte & 15 } else { byte >> 4 };
        let want = sc[sub] as f32 * q as f32 - 0.5 * mn[sub] as f32;
        assert_eq!(y[i], want, "element {i}");
    }
}

#[test]
fn q6_k_block() {
    // ql[128] low nibbles, qh[64] 2-bit highs, scales i8[16], d. Element order per 128-half:
    // l, l+32, l+64, l+96 from (ql[l] lo, ql[l+32] lo, ql[l] hi, ql[l+32] hi) and qh[l] bits.
    let ql: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
    let qh: Vec<u8> = (0..64u32).map(|i| (i * 91 % 256) as u8).collect();
    let sc: Vec<i8> = (0..16).map(|i| (i as i8 - 8) * 3).collect();
    let mut b = ql.clone();
    b.extend(&qh);
    b.extend(sc.iter().map(|&v| v as u8));
    b.extend(h(0.25));
    let y = deq(GgmlType::Q6K, &b, 256);
    #[allow(clippy::needless_range_loop)]
    for i in 0..256 {
        let (half, r) = (i / 128, i % 128);
        let (quarter, l) = (r / 32, r % 32);
        let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
        let low = match quarter {
            0 => ql[l] & 15,
            1 => ql[l + 32] & 15,
            2 => ql[l] >> 4,
            _ => ql[l + 32] >> 4,
        };
        let high = (qh[l] >> (2 * quarter)) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        let scale = sc[half * 8 + quarter * 2 + l / 16] as f32;
        assert_eq!(y[i], 0.25 * scale * q as f32, "element {i}");
    }
}

#[test]
fn wrong_byte_count_is_an_error() {
    let mut out = vec![0.0; 32];
    assert!(matches!(
        dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out),
        Err(Error::GgufInvalid(_))
    ));
}

fn sample_file() -> Vec<u8> {
    let mut q8 = h(0.5).to_vec();
    q8.extend((0..32).map(|j| j as u8));
    let meta = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("u32", Meta::U32(7)),
        ("i32", Meta::I32(-7)),
        ("f32", Meta::F32(0.5)),
        ("flag", Meta::Bool(true)),
        ("big", Meta::U64(1 << 40)),
        ("names", Meta::StrArr(vec!["a".into(), "ü b".into()])),
        ("ints", Meta::I32Arr(vec![1, -2, 3])),
        ("floats", Meta::F32Arr(vec![0.25])),
    ];
    let tensors = vec![
        f32_tensor("vec", vec![3], &[1.0, 2.0, 3.0]),
        GgufTensor {
            name: "mat".into(),
            dims: vec![32, 1],
            type_id: 8,
            data: q8,
        },
    ];
    gguf_bytes(&meta, &tensors)
}

fn open_bytes(bytes: &[u8]) -> ferroq::Result<GgufFile> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.gguf");
    std::fs::write(&p, bytes).expect("write");
    GgufFile::open(&p)
}

#[test]
fn parses_metadata_and_tensors() {
    let f = open_bytes(&sample_file()).expect("parse");
    assert_eq!(f.version, 3);
    assert_eq!(f.get("u32"), Some(&Value::U32(7)));
    assert_eq!(f.get("i32"), Some(&Value::I32(-7)));
    assert_eq!(f.get_f64("f32").expect("f32"), 0.5);
    assert_eq!(f.get("flag"), Some(&Value::Bool(true)));
    assert_eq!(f.get_u64("big").expect("u64"), 1 << 40);
    assert_eq!(f.get_str_array("names").expect("arr"), vec!["a", "ü b"]);
    assert_eq!(
        f.get("ints"),
        Some(&Value::Array(vec![
            Value::I32(1),
            Value::I32(-2),
            Value::I32(3)
        ]))
    );
    assert!(matches!(f.get_str("u32"), Err(Error::GgufBadValue { .. })));
    assert!(matches!(f.get_u64("nope"), Err(Error::GgufMissingKey(k)) if k == "nope"));
    let v = f.tensor("vec").expect("vec");
    assert_eq!(f.dequantize(v).expect("deq"), vec![1.0, 2.0, 3.0]);
    let m = f.tensor("mat").expect("mat");
    assert_eq!(m.shape(), vec![1, 32]);
    assert_eq!(m.ty, GgmlType::Q8_0);
    assert_eq!(m.start % 32, 0, "tensor data must be aligned");
    let y = f.dequantize(m).expect("deq");
    assert_eq!(y[31], 15.5);
}

#[test]
fn truncated_file_names_what_is_cut() {
    let full = sample_file();
    // cut inside the last tensor's data
    match open_bytes(&full[..full.len() - 40]) {
        Err(Error::GgufTruncated { what, .. }) => assert!(what.contains("mat"), "{what}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("truncated file parsed"),
    }
    // cut inside the metadata
    match open_bytes(&full[..60]) {
        Err(Error::GgufTruncated { what, .. }) => assert!(what.contains("metadata"), "{what}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("truncated file parsed"),
    }
    assert!(matches!(
        open_bytes(&full[..2]),
        Err(Error::GgufTruncated { .. })
    ));
}

/// A string or array length near 2^64 is reported as running to the end of the address
/// space, not wrapped around to a small number (what the fuzzer found).
#[test]
fn lengths_near_two_to_the_64_do_not_wrap_in_the_error() {
    for (ty, tail) in [(8u32, vec![]), (9u32, 8u32.to_le_bytes().to_vec())] {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes()); // tensors
        b.extend(1u64.to_le_bytes()); // metadata entries
        b.extend(1u64.to_le_bytes());
        b.push(b'k');
        b.extend(ty.to_le_bytes());
        b.extend(&tail); // an array's element type
        b.extend((u64::MAX - 3).to_le_bytes());
        b.extend([0u8; 16]);
        match open_bytes(&b) {
            Err(Error::GgufTruncated { end, file_len, .. }) => {
                assert_eq!(end, u64::MAX, "type {ty}");
                assert_eq!(file_len, b.len() as u64);
            }
            Err(e) => panic!("type {ty}: wrong error: {e}"),
            Ok(_) => panic!("type {ty}: parsed"),
        }
    }
}

#[test]
fn bad_magic_and_version() {
    let mut b = sample_file();
    b[..4].copy_from_slice(b"GGML");
    assert!(matches!(open_bytes(&b), Err(Error::GgufBadMagic { found }) if &found == b"GGML"));
    let mut b = sample_file();
    b[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(
        open_bytes(&b),
        Err(Error::GgufUnsupportedVersion(9))
    ));
}

#[test]
fn unknown_tensor_type_is_named() {
    let meta = vec![("general.architecture", Meta::Str("llama".into()))];
    let t = GgufTensor {
        name: "odd.weight".into(),
        dims: vec![4],
        type_id: 99,
        data: vec![0; 16],
    };
    match open_bytes(&gguf_bytes(&meta, &[t])) {
        Err(Error::GgufUnknownTensorType { tensor, type_id }) => {
            assert_eq!((tensor.as_str(), type_id), ("odd.weight", 99));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("unknown type parsed"),
    }
}

#[test]
fn missing_file_is_io_error() {
    assert!(matches!(
        GgufFile::open("/nonexistent/x.gguf"),
        Err(Error::Io { .. })
    ));
}

/// A GGUF v3 file written by hand: no metadata, the given tensor infos (name, GGML dims, type,
/// offset), then `data_len` zero bytes of data after the aligned header.
fn raw_gguf(infos: &[(&str, &[u64], u32, u64)], data_len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((infos.len() as u64).to_le_bytes());
    b.extend(0u64.to_le_bytes());
    for (name, dims, ty, off) in infos {
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(vec![0u8; data_len]);
    b
}

fn gguf_error(bytes: &[u8]) -> String {
    match open_bytes(bytes) {
        Ok(_) => panic!("a hostile GGUF opened"),
        Err(e) => e.to_string(),
    }
}

/// Sizes and offsets from the file are checked with checked arithmetic before anything is
/// sliced or allocated: a dimension whose byte size wraps, an offset near 2^64, data that
/// overlaps another tensor's or is not aligned are named errors.
#[test]
fn hostile_sizes_and_offsets_are_errors() {
    // 2^62 f32 values: 2^64 bytes wraps to 0 without checks
    let e = gguf_error(&raw_gguf(&[("t", &[1 << 62], 0, 0)], 64));
    assert!(e.contains("`t`") && e.contains("overflows"), "{e}");
    // dims whose product overflows
    let e = gguf_error(&raw_gguf(&[("t", &[1 << 40, 1 << 40], 0, 0)], 64));
    assert!(e.contains("overflow"), "{e}");
    // an offset near 2^64
    let e = gguf_error(&raw_gguf(&[("t", &[4], 0, u64::MAX - 31)], 64));
    assert!(e.contains("tensor `t` data"), "{e}");
    // two tensors on the same bytes
    let e = gguf_error(&raw_gguf(&[("a", &[16], 0, 0), ("b", &[8], 0, 32)], 64));
    assert!(e.contains("`a` and `b` share data bytes"), "{e}");
    // an offset off the alignment
    let e = gguf_error(&raw_gguf(&[("t", &[4], 0, 4)], 64));
    assert!(e.contains("alignment"), "{e}");
    // and a well-formed neighbour pair still opens
    let ok = open_bytes(&raw_gguf(&[("a", &[8], 0, 0), ("b", &[8], 0, 32)], 64)).expect("open");
    assert_eq!(ok.tensors.len(), 2);
}

/// Metadata arrays nested past the bound are an error, not a stack overflow; an array count
/// beyond the file is a truncation error.
#[test]
fn nested_and_oversized_metadata_arrays_are_errors() {
    // a v3 header with no tensors and one metadata key `k` whose value is an array ...
    let array_header = || {
        let mut b = Vec::new();
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.push(b'k');
        b.extend(9u32.to_le_bytes());
        b
    };
    let mut b = array_header();
    for _ in 0..100_000 {
        b.extend(9u32.to_le_bytes()); // ... of arrays ...
        b.extend(1u64.to_le_bytes());
    }
    b.extend(4u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(7u32.to_le_bytes());
    let e = gguf_error(&b);
    assert!(e.contains("nests arrays"), "{e}");

    let mut b = array_header();
    b.extend(8u32.to_le_bytes()); // strings
    b.extend((1u64 << 40).to_le_bytes());
    let e = gguf_error(&b);
    assert!(e.contains("truncated"), "{e}");
}

/// A 0-dimensional tensor where the model expects a matrix is a named error, not a panic.
#[test]
fn a_scalar_where_a_matrix_belongs_is_an_error() {
    use ferroq::checkpoint::gguf::weights::GgufWeights;
    use ferroq::checkpoint::WeightSource;
    let file = open_bytes(&raw_gguf(&[("blk.0.attn_q.weight", &[], 0, 0)], 32)).expect("open");
    let w = GgufWeights::new(&file, common::tiny_config(false)).expect("weights");
    let e = match w.load("model.layers.0.self_attn.q_proj.weight") {
        Ok(_) => panic!("a scalar q_proj loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("no dimensions"), "{e}");
}
