"""Med3DVLM's vision path: DCFormer -> dual-stream MLP-Mixer projector -> LLM ``inputs_embeds``.

``MixerLowHighHybridMLP`` has the official module's keys (mirthAI/Med3DVLM
``src/model/projector/mlp.py``): ``low_mixer.{i}`` / ``high_mixer.{i}`` MixerLayers, each with
``ln1``, ``ln2`` (LayerNorm over the channel width) and ``mlp1``/``mlp2``
(``mm_projector.0`` Linear, then ``mm_projector.{j}.1`` Linear after a GELU). The low stream takes
stage-3 tokens (256 x 384 at input 128x256x256), the high stream stage-4 tokens (32 x 768); layer
i maps tokens -> ``*_output_size[i]`` and width -> ``output_dim / 2**(depth-1-i)``; the two streams'
tokens are concatenated: (B, 128 + 128, 3584) by default (Qwen2.5-7B's width).

Ours runs the token-mixing MLP as ``W @ x`` on the (B, N, D) tensor (no transposed copies).

``Med3DVLM`` holds the vision path as the official LLM's ``model`` does (facts from Med3DVLM's
``src/model/vlm_arch.py`` and ``encoder/builder.py``): ``vision_tower`` is a ``VisionTower``
whose ``vision_tower`` is the ``DecompModel``, and ``mm_projector`` the mixer, so its keys are
the checkpoint's ``model.vision_tower.vision_tower.encoder.*`` and ``model.mm_projector.*``
without the ``model.`` prefix (:meth:`Med3DVLM.load_official_state_dict` takes a whole
checkpoint and ignores the LLM's own keys). The tower returns ``hidden_states[select_layer:]``
(-2: the stage-3 and stage-4 tokens the mixer takes). The visual tokens replace the embeddings
at positions 1..N of the sequence, after the first token, as ``prepare_inputs_for_multimodal``
does.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dcformer import dcformer


class MultiModalProjector(nn.Module):
    """``mm_projector``: Linear(n_in, n_out), then (GELU, Linear(n_out, n_out)) x (depth - 1)."""

    def __init__(self, input_size: int, output_size: int, mlp_depth: int = 2) -> None:
        super().__init__()
        self.mm_projector = nn.Sequential(nn.Linear(input_size, output_size),
                                          *[nn.Sequential(nn.GELU(), nn.Linear(output_size, output_size))
                                            for _ in range(mlp_depth - 1)])

    def linears(self):
        return [self.mm_projector[0]] + [m[1] for m in list(self.mm_projector)[1:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(x)

    def mix_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP over the token axis of x (B, N, D): (B, N_out, D), as W @ x + b."""
        for i, lin in enumerate(self.linears()):
            if i:
                x = F.gelu(x)
            x = torch.matmul(lin.weight, x) + lin.bias[:, None]
        return x


class MixerLayer(nn.Module):
    """LayerNorm -> token-mixing MLP -> LayerNorm -> channel-mixing MLP (no residuals)."""

    def __init__(self, input_size, output_size, mlp_depth: int = 2) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(input_size[1])
        self.ln2 = nn.LayerNorm(input_size[1])
        self.mlp1 = MultiModalProjector(input_size[0], output_size[0], mlp_depth)
        self.mlp2 = MultiModalProjector(input_size[1], output_size[1], mlp_depth)
        self.input_size = tuple(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or tuple(x.shape[1:]) != self.input_size:
            raise ValueError(f"MixerLayer expects (B, {self.input_size[0]}, {self.input_size[1]}), "
                             f"got shape {tuple(x.shape)}")
        x = self.mlp1.mix_tokens(self.ln1(x))
        return self.mlp2(self.ln2(x))


class MixerLowHighHybridMLP(nn.Module):
    """Med3DVLM's dual-stream projector. forward((low (B, N_l, C_l), high (B, N_h, C_h))) ->
    (B, low_output_size[-1] + high_output_size[-1], output_dim)."""

    def __init__(self, low_input_size=(256, 384), low_output_size=(192, 128), high_input_size=(32, 768),
                 high_output_size=(64, 128), output_dim: int = 3584, depth: int = 2, mlp_depth: int = 2,
                 proj_out_num: int = 256) -> None:
        super().__init__()
        if not len(low_output_size) == len(high_output_size) == depth:
            raise ValueError(f"low_output_size and high_output_size need depth={depth} entries, got "
                             f"{tuple(low_output_size)} and {tuple(high_output_size)}")
        if output_dim % 2**depth:
            raise ValueError(f"output_dim must be divisible by 2**depth={2**depth}, got {output_dim}")
        self.proj_out_num = proj_out_num
        self.output_dim = output_dim

        def stack(inp, outs):
            return nn.ModuleList([
                MixerLayer(inp if i == 0 else (outs[i - 1], output_dim // 2 ** (depth - i)),
                           (outs[i], output_dim // 2 ** (depth - i - 1)), mlp_depth) for i in range(depth)])

        self.low_mixer = stack(tuple(low_input_size), tuple(low_output_size))
        self.high_mixer = stack(tuple(high_input_size), tuple(high_output_size))

    def forward(self, x: Sequence[torch.Tensor]) -> torch.Tensor:
        low, high = x
        for lo, hi in zip(self.low_mixer, self.high_mixer):
            low, high = lo(low), hi(high)
        return torch.cat([low, high], dim=1)


class VisionTower(nn.Module):
    """Med3DVLM's ``VisionTower`` around the DCFormer (``self.vision_tower``): returns the last
    hidden state (``select_layer=0``) or the list ``hidden_states[select_layer:]`` (< 0)."""

    def __init__(self, vision: str = "small", select_layer: int = -2, backend: str = "auto") -> None:
        super().__init__()
        if select_layer > 0:
            raise ValueError(f"select_layer must be 0 or negative (as Med3DVLM), got {select_layer}")
        self.vision_tower = dcformer(vision, backend=backend)
        self.select_layer = select_layer
        ch = self.vision_tower.channels
        self.hidden_size, self.low_input_size, self.high_input_size = ch[-1], ch[-2], ch[-1]

    def forward(self, images: torch.Tensor):
        hidden = self.vision_tower(images)
        return hidden[-1] if self.select_layer == 0 else hidden[self.select_layer:]


class Med3DVLM(nn.Module):
    """DCFormer vision tower + projector producing visual tokens for a causal LM.

    Args:
        vision: DCFormer variant (Med3DVLM: "small").
        input_size: (D, H, W) the projector's token counts are built for (128, 256, 256).
        llm_dim: the LLM's hidden width (3584, Qwen2.5-7B).
        language_model: optional Hugging Face-like causal LM (``get_input_embeddings()``,
            ``forward(inputs_embeds=, attention_mask=, labels=)``); not a dependency.
        image_token_id: None (Med3DVLM): the visual tokens replace positions 1..N of the
            sequence (the prompt holds N placeholder tokens after its first token); or a token
            id whose N positions per sample receive them.
    """

    def __init__(self, vision: str = "small", input_size=(128, 256, 256), llm_dim: int = 3584,
                 language_model: Optional[nn.Module] = None, image_token_id: Optional[int] = None,
                 backend: str = "auto", **projector_kwargs) -> None:
        super().__init__()
        self.vision_tower = VisionTower(vision, select_layer=-2, backend=backend)
        ch = self.vision_tower.vision_tower.channels
        d, h, w = input_size
        if d % 64 or h % 64 or w % 64:
            raise ValueError(f"input_size must be multiples of 64, got {tuple(input_size)}")
        n3, n4 = (d // 32) * (h // 32) * (w // 32), (d // 64) * (h // 64) * (w // 64)
        kw = dict(low_input_size=(n3, ch[3]), high_input_size=(n4, ch[4]), output_dim=llm_dim)
        kw.update(projector_kwargs)
        self.mm_projector = MixerLowHighHybridMLP(**kw)
        self.input_size = (d, h, w)
        self.language_model = language_model
        self.image_token_id = image_token_id

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, N_visual, llm_dim) visual tokens; (D, H, W) must be the
        ``input_size`` the projector was built for."""
        if images.dim() != 5 or tuple(images.shape[2:]) != self.input_size:
            d, h, w = self.input_size
            raise ValueError(f"images must be (B, C, {d}, {h}, {w}) (the input_size this Med3DVLM was built with; "
                             f"build with input_size=(D, H, W) for other volumes), got {tuple(images.shape)}")
        return self.mm_projector(self.vision_tower(images))

    def prepare_inputs_embeds(self, input_ids: torch.Tensor, images: torch.Tensor,
                              attention_mask: Optional[torch.Tensor] = None, embed_tokens: Optional[nn.Module] = None):
        """(inputs_embeds, attention_mask): the visual tokens at positions 1..N (Med3DVLM) or at
        the ``image_token_id`` positions (exactly N per sample); the sequence length is kept."""
        if embed_tokens is None:
            if self.language_model is None:
                raise ValueError("pass embed_tokens= (the LLM's input embedding) or build with language_model=")
            embed_tokens = self.language_model.get_input_embeddings()
        vis = self.encode_images(images)
        n = vis.shape[1]
        if self.image_token_id is None:
            if input_ids.shape[1] < n + 1:
                raise ValueError(f"input_ids must hold the first token and {n} image placeholders (length >= {n + 1}), "
                                 f"got shape {tuple(input_ids.shape)}")
            text = embed_tokens(input_ids)
            return torch.cat([text[:, :1], vis.to(text.dtype), text[:, n + 1:]], dim=1), attention_mask
        is_img = input_ids == self.image_token_id
        counts = is_img.sum(dim=1)
        if not bool((counts == n).all()):
            raise ValueError(f"each sample needs exactly {n} image tokens (id {self.image_token_id}), "
                             f"got {counts.tolist()}")
        text = embed_tokens(input_ids.masked_fill(is_img, 0))
        embeds = text.masked_scatter(is_img[..., None], vis.to(text.dtype))
        return embeds, attention_mask

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, **kwargs):
        if self.language_model is None:
            raise ValueError("Med3DVLM.forward needs a language_model; use encode_images() for the visual tokens")
        embeds, mask = self.prepare_inputs_embeds(input_ids, images, attention_mask)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    def load_official_state_dict(self, state_dict, strict: bool = True):
        """Load the vision tower and projector from a Med3DVLM checkpoint: the whole LLM's
        (``model.vision_tower.vision_tower.*``, ``model.mm_projector.*``; the LLM's own keys
        are left out), a stage-1 projector file (``model.mm_projector.*`` only: the tower keeps
        its weights) or this module's own keys. Returns each loaded part's missing/unexpected keys."""
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()}
        parts = {}
        for name in ("vision_tower", "mm_projector"):
            sub = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
            if sub or name == "mm_projector":
                parts[name] = getattr(self, name).load_state_dict(sub, strict=strict)
        return parts
