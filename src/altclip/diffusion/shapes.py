"""The shapes of AltDiffusion pipelines, as the configs of their parts: the released ones (for benchmarks with random
weights) and a tiny one that ``altclip random-checkpoint --shape altdiffusion-tiny`` writes, so that text to image
runs without downloads. Plain dicts: nothing here imports diffusers."""

from __future__ import annotations

from dataclasses import dataclass

_XLMR_LARGE = dict(
    vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
)  # fmt: skip
_SD_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)  # fmt: skip
_SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)  # fmt: skip
# Stable Diffusion's schedule, as its pipelines are released with it.
_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                 steps_offset=1, set_alpha_to_one=False)  # fmt: skip


@dataclass(frozen=True)
class DiffusionShape:
    name: str
    description: str
    text: dict  # AltDiffusionTextConfig
    unet: dict  # diffusers' UNet2DConditionModel
    vae: dict  # diffusers' AutoencoderKL
    scheduler: dict  # diffusers' PNDMScheduler
    max_tokens: int = 77  # the tokenizer's model_max_length: prompts are padded (and limited) to it
    released: bool = True


DIFFUSION_SHAPES: dict[str, DiffusionShape] = {
    s.name: s
    for s in (
        DiffusionShape(
            "BAAI/AltDiffusion-m9",
            "Text to image in 9 languages: Stable Diffusion 1.x on AltCLIP-m9's text tower",
            text=dict(_XLMR_LARGE, project_dim=768, has_pre_transformation=False),
            unet=dict(_SD_UNET, cross_attention_dim=768, attention_head_dim=8),
            vae=_SD_VAE,
            scheduler=_SCHEDULE,
        ),
        DiffusionShape(
            "BAAI/AltDiffusion-m18",
            "Text to image in 18 languages: Stable Diffusion 2.1 (512) on AltCLIP-m18's text tower",
            text=dict(_XLMR_LARGE, project_dim=1024, has_pre_transformation=True),
            unet=dict(
                _SD_UNET, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True
            ),  # fmt: skip
            vae=_SD_VAE,
            scheduler=_SCHEDULE,
        ),
        DiffusionShape(
            "altdiffusion-tiny",
            "A tiny random AltDiffusion pipeline (32x32 images): text to image without downloads",
            text=dict(
                vocab_size=2000,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=514,
                type_vocab_size=1,
                layer_norm_eps=1e-5,
                project_dim=32,
            ),  # fmt: skip
            unet=dict(
                sample_size=16,
                in_channels=4,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=4,
                norm_num_groups=8,
            ),  # fmt: skip
            vae=dict(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                layers_per_block=1,
                block_out_channels=(8, 16),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=8,
                sample_size=32,
            ),  # fmt: skip
            scheduler=_SCHEDULE,
            released=False,
        ),
    )
}
