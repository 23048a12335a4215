"""The Sam2Predictor that benchmarks/PROPOSALS.md proposes next for sam2_refine/model.py.

model.py already has P1-P4 (commit dcf9392: no SAM2ImagePredictor, no random init,
one box per CPU decode, dense positional encoding once). This subclass adds:
  P5  the mask decoder's upscaling runs only over each object's search area. Its layers
      (2 x 2 stride-2 transposed convolutions, a per-pixel LayerNorm, GELU, per-pixel
      feature adds, the hypernetwork product) are all pixel-local, so the logits there
      are the full decode's. Elsewhere they are NOT_DECODED, which the engine never reads.
      SAM2's single-mask fallback (dynamic_multimask_via_stability) judges stability on
      that area instead of the whole 256² grid.
  P6  the first two-way attention block's projections of the image tokens (token->image
      keys and values, image->token queries) depend only on the image, because a box
      prompt's dense embedding is the constant `no_mask_embed`: they are computed once
      per window, not once per box.
Switches for measuring: BENCH_CROP=0 turns P5 (and P6) off, BENCH_SHARE=0 turns P6 off,
BENCH_PROPOSED_BATCH=N sets the boxes per decode call.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam2_refine.model import Sam2Predictor, Window
from sam2_refine.tiling import Box, search_area

CROP_UPSCALING = os.environ.get("BENCH_CROP", "1") == "1"
SHARE_FIRST_BLOCK = os.environ.get("BENCH_SHARE", "1") == "1"
NOT_DECODED = -1000.0  # logits outside an object's search area (never read)
LOW_RES = 256          # the decoder's mask grid
EMBED = 64             # the image-embedding grid; one embedding cell -> 4 x 4 mask cells


class FastSam2Predictor(Sam2Predictor):
    """model.py's Sam2Predictor with P5 and P6."""

    def __init__(self, checkpoint: Path, device: str | None = None):
        super().__init__(checkpoint, device)
        if os.environ.get("BENCH_PROPOSED_BATCH"):
            self.decode_batch_size = int(os.environ["BENCH_PROPOSED_BATCH"])

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        super().encode(window_image, window)
        self._first_block = self._first_block_projections()

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        if not CROP_UPSCALING:
            return super().decode_low_res(boxes)
        import torch

        model = self.model
        decoder = model.sam_mask_decoder
        height, width = self._window_hw
        count = len(boxes)
        out = np.full((count, LOW_RES, LOW_RES), NOT_DECODED, dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            corners = torch.as_tensor(boxes, dtype=torch.float, device=self.device).reshape(-1, 2, 2)
            corners = corners / torch.tensor([width, height], dtype=torch.float, device=self.device) * model.image_size
            labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device).repeat(count, 1)
            sparse, dense = model.sam_prompt_encoder(points=(corners, labels), boxes=None, masks=None)
            # MaskDecoder.predict_masks up to the upscaling, unchanged but for P6.
            first = 1 if decoder.pred_obj_scores else 0
            heads = [decoder.obj_score_token.weight] if decoder.pred_obj_scores else []
            output_tokens = torch.cat(heads + [decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
            tokens = torch.cat((output_tokens.unsqueeze(0).expand(count, -1, -1), sparse), dim=1)
            if SHARE_FIRST_BLOCK:
                hs, src = self._transformer(tokens)
            else:
                src = torch.repeat_interleave(self._image_embed, count, dim=0) + dense
                positions = torch.repeat_interleave(self._dense_pe, count, dim=0)
                hs, src = decoder.transformer(src, positions, tokens)
            src = src.transpose(1, 2).reshape(count, *self._image_embed.shape[1:])
            mask_tokens = hs[:, first + 1:first + 1 + decoder.num_mask_tokens, :]
            hyper_in = torch.stack(
                [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
            )
            iou_pred = decoder.iou_prediction_head(hs[:, first, :])
            dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
            feat_s0, feat_s1 = self._high_res
            for k, box in enumerate(boxes):  # P5: the upscaling over this box's search area only
                r0, r1, c0, c1 = self._embedding_crop(box)
                up = act1(ln1(dc1(src[k:k + 1, :, r0:r1, c0:c1]) + feat_s1[:, :, 2 * r0:2 * r1, 2 * c0:2 * c1]))
                up = act2(dc2(up) + feat_s0[:, :, 4 * r0:4 * r1, 4 * c0:4 * c1])
                _, channels, rows, cols = up.shape
                masks = (hyper_in[k:k + 1] @ up.view(1, channels, rows * cols)).view(1, -1, rows, cols)
                if decoder.dynamic_multimask_via_stability:
                    masks, _ = decoder._dynamic_multimask_via_stability(masks, iou_pred[k:k + 1])
                out[k, 4 * r0:4 * r1, 4 * c0:4 * c1] = masks[0, 0].float().cpu().numpy()
        return out

    def _embedding_crop(self, box: np.ndarray) -> tuple[int, int, int, int]:
        """Rows and columns (r0, r1, c0, c1) of the 64² embedding whose 4 x 4 mask cells
        cover every low-resolution cell the engine samples for this box's search area,
        plus one embedding cell on each side."""
        height, width = self._window_hw
        col0, row0, col1, row1 = search_area(Box(*(float(v) for v in box)), width, height)

        def span(start: int, stop: int, size: int) -> tuple[int, int]:
            scale = LOW_RES / size  # the engine's bilinear source positions (engine._source_positions)
            low = max(0.0, (start + 0.5) * scale - 0.5)
            high = max(0.0, (stop - 0.5) * scale - 0.5)
            return max(0, int(low) // 4 - 1), min(EMBED, min(int(high) + 1, LOW_RES - 1) // 4 + 2)

        r0, r1 = span(row0, row1, height)
        c0, c1 = span(col0, col1, width)
        return r0, r1, c0, c1

    def _first_block_projections(self) -> dict:
        """What the first two-way block computes from the image tokens alone (P6)."""
        import torch

        model = self.model
        block = model.sam_mask_decoder.transformer.layers[0]
        with torch.inference_mode(), self._autocast():
            no_mask = model.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            keys = (self._image_embed + no_mask).flatten(2).permute(0, 2, 1)
            key_pe = self._dense_pe.flatten(2).permute(0, 2, 1)
            keyed = keys + key_pe
            return {
                "keys": keys,
                "key_pe": key_pe,
                "k": block.cross_attn_token_to_image.k_proj(keyed),
                "v": block.cross_attn_token_to_image.v_proj(keys),
                "q": block.cross_attn_image_to_token.q_proj(keyed),
            }

    def _transformer(self, tokens):
        """TwoWayTransformer.forward with the first block's image projections shared (P6)."""
        import torch.nn.functional as F

        transformer = self.model.sam_mask_decoder.transformer
        first, rest = transformer.layers[0], transformer.layers[1:]
        cached = self._first_block
        count = tokens.shape[0]
        key_pe = cached["key_pe"].expand(count, -1, -1)

        def heads(attention, x):
            return attention._separate_heads(x, attention.num_heads)

        # TwoWayAttentionBlock.forward of the first block (skip_first_layer_pe=True).
        queries = first.norm1(first.self_attn(q=tokens, k=tokens, v=tokens))
        to_image = first.cross_attn_token_to_image
        out = F.scaled_dot_product_attention(
            heads(to_image, to_image.q_proj(queries + tokens)),
            heads(to_image, cached["k"].expand(count, -1, -1)),
            heads(to_image, cached["v"].expand(count, -1, -1)),
        )
        queries = first.norm2(queries + to_image.out_proj(to_image._recombine_heads(out)))
        queries = first.norm3(queries + first.mlp(queries))
        to_token = first.cross_attn_image_to_token
        out = F.scaled_dot_product_attention(
            heads(to_token, cached["q"].expand(count, -1, -1)),
            heads(to_token, to_token.k_proj(queries + tokens)),
            heads(to_token, to_token.v_proj(queries)),
        )
        keys = first.norm4(cached["keys"] + to_token.out_proj(to_token._recombine_heads(out)))
        # The other blocks and the final attention, as TwoWayTransformer.forward runs them.
        for layer in rest:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
        attention = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
        queries = transformer.norm_final_attn(queries + attention)
        return queries, keys
