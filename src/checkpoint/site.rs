//! The four linear inputs of a decoder block (`Site`) and which are rotated (`OnlineHadamard`).
//!
//! - Both describe the checkpoint: recipes and compressed-tensors records name sites, and the
//!   rotation travels in the config's `hadamard` and `quantization_config.ferroq` (QuaRot).
//! - The transform itself is `quant::hadamard`.

use crate::error::{Error, Result};

/// Where a linear's input is observed during calibration: the four distinct inputs of a block.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// input_layernorm output, read by q/k/v_proj
    AttnIn,
    /// attention output, read by o_proj
    OIn,
    /// post_attention_layernorm output, read by gate/up_proj
    MlpIn,
    /// silu(gate) * up, read by down_proj
    DownIn,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::AttnIn, Site::OIn, Site::MlpIn, Site::DownIn];

    /// Module suffixes (after `model.layers.N.`) of the linears that read this input.
    pub fn linears(self) -> &'static [&'static str] {
        match self {
            Site::AttnIn => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            Site::OIn => &["self_attn.o_proj"],
            Site::MlpIn => &["mlp.gate_proj", "mlp.up_proj"],
            Site::DownIn => &["mlp.down_proj"],
        }
    }

    /// The name recipes and checkpoints use.
    pub fn name(self) -> &'static str {
        match self {
            Site::AttnIn => "attn_in",
            Site::OIn => "o_in",
            Site::MlpIn => "mlp_in",
            Site::DownIn => "down_in",
        }
    }

    pub fn from_name(name: &str) -> Option<Site> {
        Site::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The site a decoder linear reads, from its full name.
    pub fn of_linear(name: &str) -> Option<(usize, Site)> {
        let (l, module) = layer_module(name)?;
        Site::ALL
            .into_iter()
            .find(|s| s.linears().contains(&module))
            .map(|s| (l, s))
    }
}

/// The layer index and the rest of a decoder tensor's HF name (`model.layers.N.REST`).
pub fn layer_module(name: &str) -> Option<(usize, &str)> {
    let (l, module) = name.strip_prefix("model.layers.")?.split_once('.')?;
    Some((l.parse().ok()?, module))
}

/// Per-site block sizes of the rotated inputs (every layer alike).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnlineHadamard {
    /// Indexed like `Site::ALL`.
    blocks: [Option<usize>; 4],
}

fn index(site: Site) -> usize {
    match site {
        Site::AttnIn => 0,
        Site::OIn => 1,
        Site::MlpIn => 2,
        Site::DownIn => 3,
    }
}

impl OnlineHadamard {
    pub const NONE: OnlineHadamard = OnlineHadamard { blocks: [None; 4] };

    pub fn block(&self, site: Site) -> Option<usize> {
        self.blocks[index(site)]
    }

    /// Rotate `site`'s input in blocks of `block`, after checking the block fits `dim`.
    pub fn set(&mut self, site: Site, block: usize, dim: usize) -> Result<()> {
        if !block.is_power_of_two() || block < 2 || !dim.is_multiple_of(block) {
            return Err(Error::InvalidArgument(format!(
                "hadamard block {block} for {} must be a power of two ≥ 2 dividing its {dim} channels",
                site.name()
            )));
        }
        self.blocks[index(site)] = Some(block);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.iter().all(Option::is_none)
    }

    /// The rotation as the marker stored with rotated weights (`__metadata__` key
    /// `ferroq.hadamard`): `site:block` pairs in `Site::ALL` order, or `none`.
    pub fn marker(&self) -> String {
        let s: Vec<String> = self
            .sites()
            .iter()
            .map(|(site, b)| format!("{}:{b}", site.name()))
            .collect();
        if s.is_empty() {
            "none".into()
        } else {
            s.join(",")
        }
    }

    /// (site, block) of every rotated site, in `Site::ALL` order.
    pub fn sites(&self) -> Vec<(Site, usize)> {
        Site::ALL
            .into_iter()
            .filter_map(|s| self.block(s).map(|b| (s, b)))
            .collect()
    }
}

/// Names of the linears of `num_layers` decoder blocks, in layer order.
pub fn decoder_linears(num_layers: usize) -> Vec<String> {
    (0..num_layers)
        .flat_map(|l| {
            Site::ALL.into_iter().flat_map(move |s| {
                s.linears()
                    .iter()
                    .map(move |m| format!("model.layers.{l}.{m}"))
            })
        })
        .collect()
}
