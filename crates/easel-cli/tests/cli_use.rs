//! `easel stylize --use SPEC` paints the same bytes as the flags the SPEC stands for, `-` reads
//! the photo from standard input and writes the PNG to standard output, and a missing output
//! folder is created.

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

mod common;

use common::{assert_success, easel_command, s, stderr};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn easel(args: &[&str]) -> Output {
    easel_command(args).output().expect("the easel binary runs")
}

/// Runs `stylize PHOTO ARGS... -o OUT` on the example cat at 96 px and returns OUT's bytes.
fn paint(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let out = dir.join(name);
    let cat = example("chelsea_cat.png");
    let mut all = vec!["stylize", &cat, "--max-size", "96", "--device", "cpu"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", s(&out)]);
    let run = easel(&all);
    assert_success(&run);
    std::fs::read(&out).unwrap()
}

#[test]
fn use_specs_paint_the_bytes_of_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let starry = example("vangogh_starry_night.jpg");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--use", "arbitrary", "--style", &starry],
            &["--style", &starry],
        ),
        (
            &["--use", "arbitrary@strength=0.6", "--style", &starry],
            &["--style", &starry, "--strength", "0.6"],
        ),
        (&["--use", "preset:7"], &["--preset", "7"]),
        (
            &["--use", "preset:3:0.5,12:0.5@keep-colors=true"],
            &["--preset", "3:0.5,12:0.5", "--keep-colors"],
        ),
    ];
    for (k, (with_use, with_flags)) in cases.iter().enumerate() {
        let a = paint(dir.path(), &format!("use{k}.png"), with_use);
        let b = paint(dir.path(), &format!("flags{k}.png"), with_flags);
        assert!(a == b, "{with_use:?} and {with_flags:?} differ");
    }
}

#[test]
fn bad_use_specs_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let cat = example("chelsea_cat.png");
    let cases = [
        ("preset:", "names no preset mix"),
        ("arbitrary@strenght=0.5", "@strenght"),
        ("no-such-style", "--use no-such-style: no installed style"),
        ("preset:7@strength=much", "strength=much"),
    ];
    for (spec, expected) in cases {
        let run = easel(&["stylize", &cat, "--use", spec, "-o", s(&out)]);
        let err = stderr(&run);
        assert!(!run.status.success(), "{spec}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{spec}: {err}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{spec}: not one line: {err}"
        );
    }
    assert!(!out.exists());
}

#[test]
fn dash_reads_stdin_and_writes_a_png_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let cat = example("chelsea_cat.png");
    let expected = paint(dir.path(), "file.png", &["--preset", "3"]);

    let mut child = easel_command(&[
        "stylize",
        "-",
        "--preset",
        "3",
        "--max-size",
        "96",
        "--device",
        "cpu",
        "-o",
        "-",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let photo = std::fs::read(&cat).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&photo));
    let run = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_success(&run);
    // Same pixels and parameters; only the photo's name in the parameters differs.
    let from_stdout = image::load_from_memory(&run.stdout).unwrap().to_rgb8();
    let from_file = image::load_from_memory(&expected).unwrap().to_rgb8();
    assert!(
        from_stdout == from_file,
        "stdin/stdout painted other pixels"
    );
    assert!(run.stdout.starts_with(b"\x89PNG\r\n\x1a\n"));

    // `-` is one photo; --json and an image on stdout would mix.
    let run = easel(&["stylize", "-", &cat, "--preset", "3", "-o", "out/"]);
    assert!(stderr(&run).contains("give it alone"), "{}", stderr(&run));
    let run = easel(&["stylize", &cat, "--preset", "3", "--json", "-o", "-"]);
    assert!(
        stderr(&run).contains("--json prints on standard output"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn missing_output_folders_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("out/deeper/cat.png");
    let run = easel(&[
        "stylize",
        &example("chelsea_cat.png"),
        "--preset",
        "1",
        "--max-size",
        "64",
        "-o",
        s(&nested),
    ]);
    assert_success(&run);
    assert!(image::open(&nested).is_ok());
}
