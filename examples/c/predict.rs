// Classify CSV rows with a model saved by pynn, from Rust: predict.c's job
// through pynn.h's functions declared with extern "C".
//
//   rustc -O predict.rs -L /path/to/lib -l pynn -C link-args=-Wl,-rpath,/path/to/lib
//   ./predict model.safetensors < rows.csv
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::{self, BufRead, Write};
use std::process::exit;

#[link(name = "pynn")]
extern "C" {
    fn pynn_model_load(path: *const c_char, err: *mut c_char, err_len: usize) -> *mut c_void;
    fn pynn_model_input_shape(m: *const c_void, shape: *mut i64, max_rank: c_int) -> c_int;
    fn pynn_model_output_shape(m: *const c_void, shape: *mut i64, max_rank: c_int) -> c_int;
    fn pynn_model_predict(m: *mut c_void, x: *const f32, batch: i64, y: *mut f32, err: *mut c_char,
                          err_len: usize) -> c_int;
    fn pynn_model_free(m: *mut c_void);
}

fn size_of_shape(read: unsafe extern "C" fn(*const c_void, *mut i64, c_int) -> c_int,
                 model: *const c_void) -> usize {
    let mut shape = [0i64; 8];
    let rank = unsafe { read(model, shape.as_mut_ptr(), 8) };
    assert!(rank >= 0, "more than 8 axes");
    shape[..rank as usize].iter().product::<i64>() as usize
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 2 {
        eprintln!("usage: {} MODEL < rows.csv", args[0]);
        exit(2);
    }
    let mut err = [0 as c_char; 512];
    let path = CString::new(args[1].as_str()).expect("a path without NUL bytes");
    let model = unsafe { pynn_model_load(path.as_ptr(), err.as_mut_ptr(), err.len()) };
    if model.is_null() {
        eprintln!("{}", unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy());
        exit(1);
    }
    let features = size_of_shape(pynn_model_input_shape, model);
    let classes = size_of_shape(pynn_model_output_shape, model);
    let mut x = Vec::new();
    for (number, line) in io::stdin().lock().lines().enumerate() {
        let line = line.expect("standard input");
        let row: Vec<f32> = line.split(',').filter_map(|v| v.trim().parse().ok()).collect();
        if row.len() != features {
            eprintln!("line {}: expected {} comma-separated numbers", number + 1, features);
            unsafe { pynn_model_free(model) };
            exit(1);
        }
        x.extend(row);
    }
    let rows = x.len() / features.max(1);
    let mut y = vec![0f32; rows * classes];
    let status = unsafe {
        pynn_model_predict(model, x.as_ptr(), rows as i64, y.as_mut_ptr(), err.as_mut_ptr(), err.len())
    };
    if status != 0 {
        eprintln!("{}", unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy());
        unsafe { pynn_model_free(model) };
        exit(1);
    }
    let mut out = io::stdout().lock();
    for scores in y.chunks(classes) {
        let best = (0..classes).fold(0, |best, c| if scores[c] > scores[best] { c } else { best });
        writeln!(out, "{}", best).expect("standard output");
    }
    unsafe { pynn_model_free(model) };
}
