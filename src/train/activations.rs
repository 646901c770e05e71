//! The trainer's activation table (llm.c's `act_sizes`): every tensor one micro-batch keeps or uses
//! as scratch, named, with its shape, for a (config, batch, seq, adapter). `Trainer::new` allocates
//! exactly this table and `train::memory` sums it, so the estimate equals the allocation by
//! construction.
//!
//! Two choices shape the table beyond the batch ([`Keep`]): the LM head and the loss run over chunks of
//! `logit_rows` rows, so logits and their gradient exist for one chunk only; and with gradient
//! checkpointing only the block inputs are kept per layer, with one layer's worth of the other
//! activations that every block's forward writes and the backward recomputes block by block.
//!
//! Each group is a struct generic over what an entry is: `Vec<usize>` (its shape) when planned,
//! `GpuTensor` once allocated. One macro declares a group's fields once and derives both walks over
//! them (listing and filling), in the same order.

use crate::gpu::attention::lse_len;
use crate::model::{Arch, Config};
use crate::reference::attention::Heads;

macro_rules! activation_group {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $kind:ident),* $(,)? }) => {
        $(#[$doc])*
        pub(crate) struct $name<T> { $($(#[$fdoc])* pub $field: activation_group!(@ty $kind, T)),* }

        impl<T> $name<T> {
            /// Every entry with its name, in declaration order.
            pub fn each<'a>(&'a self, out: &mut Vec<(&'static str, &'a T)>) {
                $( activation_group!(@each $kind, out, stringify!($field), &self.$field); )*
            }

            /// The same group with its entries taken, in declaration order, from `values`.
            pub fn fill<U>(&self, values: &mut impl Iterator<Item = U>) -> $name<U> {
                $name { $($field: activation_group!(@fill $kind, values, &self.$field)),* }
            }
        }
    };
    (@ty one, $T:ident) => { $T };
    (@ty many, $T:ident) => { Vec<$T> };
    (@each one, $out:ident, $n:expr, $v:expr) => { $out.push(($n, $v)) };
    (@each many, $out:ident, $n:expr, $v:expr) => { $out.extend($v.iter().map(|t| ($n, t))) };
    (@fill one, $values:ident, $v:expr) => { $values.next().expect("one value per entry") };
    (@fill many, $values:ident, $v:expr) => { $v.iter().map(|_| $values.next().expect("one value per entry")).collect() };
}

activation_group! {
    /// What the forward keeps of one block for the backward, besides its input (kept in
    /// [`Activations::inputs`], also with checkpointing).
    LayerActs {
        /// attn_norm(x_in) [N, d]: the input of q, k, v.
        h1: one,
        /// After RoPE (Llama): [N, q_dim], [N, kv_dim], [N, kv_dim].
        q: one,
        k: one,
        v: one,
        /// Per window: attention's row logsumexp [Hq, T] (the backward recomputes P from it, so
        /// attention keeps O(T), not the [Hq, T, T] probabilities).
        lse: many,
        /// Attention output [N, q_dim]: the input of o.
        att: one,
        /// x_in + o(att) [N, d]: the MLP norm's input.
        x_mid: one,
        /// mlp_norm(x_mid) [N, d].
        h2: one,
        /// GPT-2: fc output, gelu output. Llama: gate output, up output, silu(gate)·up. [N, ffn] each
        /// (GPT-2's ff3 is empty).
        ff1: one,
        ff2: one,
        ff3: one,
    }
}

activation_group! {
    /// The batch, the network's end and the loss: [N] ids, positions and targets (u32), the last
    /// block's output and its norm [N, d]; for one chunk of C rows, its rows of the norm and their
    /// gradient [C, d], its targets and losses [C], logits and their gradient [C, vocab]; per-row
    /// losses [N], a column of ones (for the mean as a product) and the accumulated loss [1].
    RowActs {
        ids: one, pos_ids: one, targets: one, x_final: one, hf: one,
        chunk_h: one, chunk_dh: one, chunk_targets: one, chunk_losses: one, logits: one, dlogits: one,
        losses: one, ones: one, loss: one,
    }
}

activation_group! {
    /// Per adapter module: u = x·Aᵀ and g = Σ_parts dy·B_p [N, r] each; dropout(x) [N, max in] of the
    /// module being run (empty without dropout).
    LoraActs { u: many, g: many, xd: one }
}

activation_group! {
    /// Scratch shared by the blocks: the projection output and the backward's gradients (the
    /// residual stream's gradient alternates between grad_a and grad_b).
    Scratch { proj: one, dh: one, dtmp: one, grad_a: one, grad_b: one, d_att: one, dq: one, dk: one, dv: one, dff1: one, dff2: one, dff3: one }
}

activation_group! {
    /// One window's rows [T, ·] for attention (os: its output, in the backward too), and the
    /// attention backward's scratch D = rowsum(dO ⊙ O) [Hq, T].
    WindowActs { qs: one, ks: one, vs: one, os: one, dos: one, dqs: one, dks: one, dvs: one, delta: one }
}

/// The whole table.
pub(crate) struct Activations<T> {
    /// Every block's input [N, d] (block l's attention-norm input).
    pub inputs: Vec<T>,
    /// Per block, or one shared by all with gradient checkpointing.
    pub layers: Vec<LayerActs<T>>,
    pub rows: RowActs<T>,
    pub lora: LoraActs<T>,
    pub scratch: Scratch<T>,
    pub window: WindowActs<T>,
}

impl<T> Activations<T> {
    /// Every entry with its name.
    pub fn each(&self) -> Vec<(&'static str, &T)> {
        let mut out: Vec<(&'static str, &T)> = self.inputs.iter().map(|t| ("x_in", t)).collect();
        for l in &self.layers {
            l.each(&mut out);
        }
        self.rows.each(&mut out);
        self.lora.each(&mut out);
        self.scratch.each(&mut out);
        self.window.each(&mut out);
        out
    }

    /// The same table with its entries taken in [`Activations::each`]'s order from `values`.
    pub fn fill<U>(&self, values: impl IntoIterator<Item = U>) -> Activations<U> {
        let mut values = values.into_iter();
        let inputs = self.inputs.iter().map(|_| values.next().expect("one value per entry")).collect();
        let layers = self.layers.iter().map(|l| l.fill(&mut values)).collect();
        let rows = self.rows.fill(&mut values);
        let lora = self.lora.fill(&mut values);
        let scratch = self.scratch.fill(&mut values);
        let window = self.window.fill(&mut values);
        assert!(values.next().is_none(), "more values than activations");
        Activations { inputs, layers, rows, lora, scratch, window }
    }
}

/// Bytes of logits (and as much again of their gradient) one chunk may take: small next to a
/// model's weights, large enough that the head's matmul is not starved of rows (GPT-2's 50257-word
/// vocabulary: 83 rows; Qwen2.5's 151936: 27), and under WebGPU's smallest binding limit (128 MiB).
pub(crate) const LOGIT_CHUNK_BYTES: u64 = 16 << 20;

/// Rows of logits per chunk for `rows` rows of a `vocab`-word vocabulary: as many as fit
/// `min(LOGIT_CHUNK_BYTES, max_binding)` bytes, at least one, at most `rows`.
pub(crate) fn logit_rows(vocab: usize, rows: usize, max_binding: u64) -> usize {
    let bytes = LOGIT_CHUNK_BYTES.min(max_binding);
    ((bytes / (4 * vocab.max(1) as u64)) as usize).clamp(1, rows.max(1))
}

/// The activation table's choices beyond the batch shape (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keep {
    /// Rows per chunk of the LM head and the loss.
    pub logit_rows: usize,
    /// Gradient checkpointing: one shared set of block activations, recomputed in the backward.
    pub checkpoint: bool,
}

/// Shapes of the activations of `batch` windows of `seq` tokens, with adapter modules of `ranks` and
/// dropout on inputs up to `dropout_in` wide (0: no dropout), laid out as `keep` says.
pub(crate) fn plan(c: &Config, batch: usize, seq: usize, ranks: &[usize], dropout_in: usize, keep: Keep) -> Activations<Vec<usize>> {
    let (n, d, f, qd, kvd, v) = (batch * seq, c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.vocab_size);
    let chunk = keep.logit_rows;
    // GPT-2's MLP has no third activation (Llama's silu(gate)·up).
    let f3 = if c.arch == Arch::Llama { f } else { 0 };
    let heads = Heads { q_heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim };
    let layer = || LayerActs {
        h1: vec![n, d],
        q: vec![n, qd],
        k: vec![n, kvd],
        v: vec![n, kvd],
        lse: vec![vec![lse_len(seq, &heads)]; batch],
        att: vec![n, qd],
        x_mid: vec![n, d],
        h2: vec![n, d],
        ff1: vec![n, f],
        ff2: vec![n, f],
        ff3: vec![n, f3],
    };
    let layer_sets = if keep.checkpoint { c.num_layers.min(1) } else { c.num_layers };
    Activations {
        inputs: vec![vec![n, d]; c.num_layers],
        layers: (0..layer_sets).map(|_| layer()).collect(),
        rows: RowActs {
            ids: vec![n],
            pos_ids: vec![n],
            targets: vec![n],
            x_final: vec![n, d],
            hf: vec![n, d],
            chunk_h: vec![chunk, d],
            chunk_dh: vec![chunk, d],
            chunk_targets: vec![chunk],
            chunk_losses: vec![chunk],
            logits: vec![chunk, v],
            dlogits: vec![chunk, v],
            losses: vec![n],
            ones: vec![n],
            loss: vec![1],
        },
        lora: LoraActs {
            u: ranks.iter().map(|&r| vec![n, r]).collect(),
            g: ranks.iter().map(|&r| vec![n, r]).collect(),
            xd: vec![n, dropout_in],
        },
        scratch: Scratch {
            proj: vec![n, d],
            dh: vec![n, d],
            dtmp: vec![n, d],
            grad_a: vec![n, d],
            grad_b: vec![n, d],
            d_att: vec![n, qd],
            dq: vec![n, qd],
            dk: vec![n, kvd],
            dv: vec![n, kvd],
            dff1: vec![n, f],
            dff2: vec![n, f],
            dff3: vec![n, f3],
        },
        window: WindowActs {
            qs: vec![seq, qd],
            ks: vec![seq, kvd],
            vs: vec![seq, kvd],
            os: vec![seq, qd],
            dos: vec![seq, qd],
            dqs: vec![seq, qd],
            dks: vec![seq, kvd],
            dvs: vec![seq, kvd],
            delta: vec![lse_len(seq, &heads)],
        },
    }
}
