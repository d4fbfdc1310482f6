//! Will it fit? An estimate, before anything is loaded, of the device memory that the
//! requested offload of both models needs — weights of the offloaded layers, their KV cache,
//! the compute buffer — against a device's free memory, with the flag to change when it does
//! not fit. Pure arithmetic (no llama.cpp), so it is tested against figures worked by hand.
//!
//! The model follows llama.cpp's layout: `n_layer` repeating layers plus an output layer,
//! offloaded in that order by `-ngl` (a value above `n_layer` also moves the output layer);
//! each offloaded layer's KV cache lives on the device unless `--no-kv-offload`. Weights are
//! taken as evenly spread over `n_layer + 1` slices of the file, and the compute buffer as one
//! micro-batch of logits and activations — an estimate that errs high by design, so that a
//! refusal is the exception and an out-of-memory crash does not happen.

use crate::settings::KvType;

/// What one model would put on a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    /// "target" or "draft", and the model's name, for messages.
    pub role: &'static str,
    pub name: String,
    pub file_bytes: u64,
    pub n_layer: u64,
    /// Key/value widths per layer (n_embd × n_head_kv / n_head).
    pub n_embd_kv: u64,
    pub n_embd: u64,
    pub n_vocab: u64,
    pub n_gpu_layers: u64,
    /// KV cells: n_ctx × sequences.
    pub n_cells: u64,
    pub n_ubatch: u64,
    pub type_k: KvType,
    pub type_v: KvType,
    pub kv_offload: bool,
}

/// Bytes of `n` elements of `t`.
fn bytes_of(t: KvType, n: u64) -> u64 {
    let (block_bytes, block_elems) = t.block();
    n.div_ceil(block_elems) * block_bytes
}

impl Footprint {
    /// Repeating layers on the device.
    pub fn layers_offloaded(&self) -> u64 {
        self.n_gpu_layers.min(self.n_layer)
    }
    /// Weight bytes on the device.
    pub fn weights(&self) -> u64 {
        let slices = self.n_gpu_layers.min(self.n_layer + 1);
        self.file_bytes / (self.n_layer + 1) * slices
    }
    /// KV cache bytes of one layer for all cells.
    fn kv_per_layer(&self) -> u64 {
        bytes_of(self.type_k, self.n_embd_kv * self.n_cells) + bytes_of(self.type_v, self.n_embd_kv * self.n_cells)
    }
    /// KV cache bytes on the device.
    pub fn kv(&self) -> u64 {
        if self.kv_offload {
            self.kv_per_layer() * self.layers_offloaded()
        } else {
            0
        }
    }
    /// Compute buffer on the device: one micro-batch of f32 logits and activations (none when
    /// nothing is offloaded).
    pub fn compute(&self) -> u64 {
        if self.n_gpu_layers == 0 {
            0
        } else {
            4 * self.n_ubatch * (self.n_vocab + 8 * self.n_embd)
        }
    }
    pub fn total(&self) -> u64 {
        self.weights() + self.kv() + self.compute()
    }
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Check that `models` (on one device) fit `free` bytes. The error names each model's share,
/// the device, and what would fit: the most target layers (`-ngl`), the draft on the CPU
/// (`-devd none`), or a smaller context.
pub fn check(models: &[Footprint], device: &str, free: u64) -> Result<(), String> {
    let need: u64 = models.iter().map(Footprint::total).sum();
    if need <= free {
        return Ok(());
    }
    let parts: Vec<String> = models
        .iter()
        .filter(|m| m.total() > 0)
        .map(|m| {
            format!(
                "{} {} ({}/{} layers: weights {}, KV {}, compute {})",
                m.role,
                m.name,
                m.layers_offloaded(),
                m.n_layer,
                gib(m.weights()),
                gib(m.kv()),
                gib(m.compute())
            )
        })
        .collect();
    let mut hints = Vec::new();
    if let Some(draft) = models.iter().find(|m| m.role == "draft" && m.total() > 0) {
        if need - draft.total() <= free {
            hints.push(format!("keep the draft on the CPU (-ngld 0 or -devd none; {} would then fit)", gib(need - draft.total())));
        }
    }
    if let Some(target) = models.iter().find(|m| m.role == "target" && m.n_gpu_layers > 0) {
        let others: u64 = models.iter().filter(|m| m.role != "target").map(Footprint::total).sum();
        // the most target layers that fit beside the others
        let best = (0..=target.n_gpu_layers.min(target.n_layer + 1))
            .rev()
            .find(|&l| others + Footprint { n_gpu_layers: l, ..target.clone() }.total() <= free);
        match best {
            Some(l) if l > 0 => hints.push(format!("offload fewer target layers (-ngl {l})")),
            _ => {}
        }
        if target.kv() > 0 {
            hints.push(
                "a smaller context (-c), fewer sequences (--parallel), a quantized KV cache (-ctk/-ctv q8_0) or --no-kv-offload".into(),
            );
        }
    }
    Err(format!(
        "{} needed on {device} but {} is free: {}; {}",
        gib(need),
        gib(free),
        parts.join(" + "),
        if hints.is_empty() { "offload fewer layers".to_string() } else { hints.join(", or ") }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1.5B-like model: 28 layers, 1536 wide with 256-wide K/V (12 heads, 2 KV heads),
    /// a 151,936-token vocabulary, a 1,120,000,000-byte file (29 slices of 38,620,689 bytes).
    fn target(ngl: u64) -> Footprint {
        Footprint {
            role: "target",
            name: "t".into(),
            file_bytes: 1_120_000_000,
            n_layer: 28,
            n_embd_kv: 256,
            n_embd: 1536,
            n_vocab: 151_936,
            n_gpu_layers: ngl,
            n_cells: 4096,
            n_ubatch: 512,
            type_k: KvType::F16,
            type_v: KvType::F16,
            kv_offload: true,
        }
    }

    #[test]
    fn figures_worked_by_hand() {
        let t = target(99);
        // every slice: 1_120_000_000 / 29 = 38_620_689 (floor) × 29
        assert_eq!(t.weights(), 38_620_689 * 29);
        // KV: 2 (K and V) × 256 × 4096 cells × 2 bytes × 28 layers = 117,440,512
        assert_eq!(t.kv(), 117_440_512);
        // compute: 4 bytes × 512 × (151,936 + 8 × 1536) = 336,330,752
        assert_eq!(t.compute(), 336_330_752);
        // 20 layers: 20 slices of weights, 20 layers of KV
        let t20 = target(20);
        assert_eq!((t20.weights(), t20.kv()), (38_620_689 * 20, 117_440_512 / 28 * 20));
        // q8_0 keys: 34 bytes per 32 elements → 256 × 4096 / 32 × 34 = 1,114,112 per layer
        let q = Footprint { type_k: KvType::Q8_0, ..target(1) };
        assert_eq!(q.kv(), 1_114_112 + 2 * 256 * 4096);
        assert_eq!(Footprint { kv_offload: false, ..target(99) }.kv(), 0);
        assert_eq!(target(0).total(), 0);
    }

    #[test]
    fn a_draft_that_does_not_fit_beside_the_target_is_refused_with_the_fix() {
        let draft = Footprint { role: "draft", name: "d".into(), file_bytes: 400_000_000, n_layer: 24, ..target(99) };
        let (t, d) = (target(99), draft);
        let free = t.total() + 100_000_000;
        assert!(check(std::slice::from_ref(&t), "CUDA0", free).is_ok(), "the target alone fits");
        let e = check(&[t.clone(), d.clone()], "CUDA0", free).unwrap_err();
        assert!(e.contains("needed on CUDA0 but 1.56 GiB is free"), "{e}");
        assert!(e.contains("draft d (24/24 layers"), "{e}");
        assert!(e.contains("keep the draft on the CPU (-ngld 0 or -devd none"), "{e}");
        // the most target layers beside the draft: check the suggested -ngl really fits
        let l: u64 = e.split("-ngl ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
        assert!(d.total() + Footprint { n_gpu_layers: l, ..t.clone() }.total() <= free);
        assert!(d.total() + Footprint { n_gpu_layers: l + 1, ..t }.total() > free);
    }
}
