//! `specrun devices`: the backends and devices this build of llama.cpp sees — the names
//! `--device`/`--device-draft` take, their kind, and free/total memory.

use crate::cli::DevicesArgs;
use anyhow::Result;
use std::process::ExitCode;

/// The cargo features this binary was built with that bring devices.
fn build_features() -> String {
    let mut f = vec!["cpu"];
    for (on, name) in [(cfg!(feature = "cuda"), "cuda"), (cfg!(feature = "metal"), "metal"), (cfg!(feature = "vulkan"), "vulkan")] {
        if on {
            f.push(name);
        }
    }
    f.join("+")
}

#[cfg(feature = "llama")]
pub fn devices(args: &DevicesArgs) -> Result<ExitCode> {
    let list = crate::backend::llama::devices()?;
    if args.json {
        crate::io::out(&(serde_json::to_string(&serde_json::json!({"build": build_features(), "devices": list}))? + "\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|d| [d.name.clone(), d.kind.to_string(), d.backend.clone(), gib(d.memory_free), gib(d.memory_total), d.description.clone()])
        .collect();
    let head = ["device", "type", "backend", "free", "total", "description"];
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([head[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: [&str; 6]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = format!("built with: {}\n{}\n", build_features(), line(head));
    for r in &rows {
        out += &line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
        out.push('\n');
    }
    if !list.iter().any(|d| d.kind != "cpu") {
        out += if build_features() == "cpu" {
            "no GPU: build with --features cuda, vulkan or metal (README, \"GPUs\") to offload with -ngl\n"
        } else {
            "no GPU found by this GPU build: is the GPU driver installed and the device visible (nvidia-smi, vulkaninfo)?\n"
        };
    }
    crate::io::out(&out)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "llama"))]
pub fn devices(_: &DevicesArgs) -> Result<ExitCode> {
    anyhow::bail!(
        "this specrun was built without the llama.cpp backend (cargo feature `llama`), so it sees no devices ({})",
        build_features()
    )
}
