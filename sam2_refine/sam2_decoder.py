"""SAM2's mask decoder for box prompts, computing only what the engine reads.

It gives what sam2's MaskDecoder gives for a box (its chosen mask, its other three masks,
their predicted IoUs, the object score) without importing sam2's image predictor (which
pulls in torchvision, seconds of start-up), and computes less:
- the upscaling runs only over the embedding cells that cover the area the engine reads
  (each box's `areas` row). Its layers (two 2 x 2 stride-2 transposed convolutions, a
  per-pixel LayerNorm, GELU, per-pixel adds of the high-resolution features, the
  hypernetwork product) are pixel-local, so the logits there are the full decoder's. SAM2's
  fallback to its best multi-mask output when the single mask is unstable (build_sam2's
  `dynamic_multimask_via_stability`) is judged on those cells, in fp32 whatever the
  precision of the logits; it is the full decoder's judgement whenever no logit outside the
  area exceeds -0.05, i.e. whenever the object lies inside its area;
- the first two-way attention block's projections of the image tokens are computed once per
  window (`first_block_projections`): with box prompts the dense prompt embedding is the
  constant `no_mask_embed`, so they are the same for every box.
tests/test_decoder_equivalence.py checks both against sam2's own decoder.

Each box's masks come back cropped to the cells its area reads (`DecodedMasks.origins`):
per box over its own embedding cells (`whole_grid` False: the CPU), or the batch over the
whole grid at once on the device, then cropped there before one transfer (`whole_grid`
True: CUDA). Torch is imported only when called.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .seam import LOW_RES_SIDE, DecodedMasks, Span, low_res_span

# The image-embedding grid the decoder upscales from: one embedding cell becomes 4 x 4
# low-resolution cells.
EMBEDDING_SIDE = 64
# What the decoder leaves in the logits outside the areas it was asked for (never read).
NOT_DECODED = -1000.0


def embedding_span(cells: Span) -> Span:
    """The embedding cells whose upscaling produces low-resolution `cells` (4 per cell)."""
    return Span(cells.start // 4, -(-cells.stop // 4))


@dataclass
class Encoded:
    """One encoded window: what the decoder reads of it (model tensors)."""

    window_hw: tuple[int, int]
    image_embed: object
    high_res: list
    first_block: dict


def read_cells(area: np.ndarray | None, window_hw: tuple[int, int]) -> tuple[Span, Span]:
    """The low-resolution rows and columns the engine reads for `area` (window pixels
    col0, row0, col1, row1, end-exclusive); every cell when None."""
    if area is None:
        return Span(0, LOW_RES_SIDE), Span(0, LOW_RES_SIDE)
    height, width = window_hw
    col0, row0, col1, row1 = (int(v) for v in area)
    return low_res_span(max(row0, 0), min(row1, height), height), low_res_span(max(col0, 0), min(col1, width), width)


def on_whole_grid(decoded: DecodedMasks) -> DecodedMasks:
    """Cropped masks pasted into whole grids (NOT_DECODED around them)."""
    if decoded.origins is None:
        return decoded
    count = len(decoded.logits)
    tokens = 1 + (0 if decoded.candidates is None else decoded.candidates.shape[1])
    masks = np.full((count, tokens, *decoded.grid_shape), NOT_DECODED, dtype=np.float32)
    height, width = decoded.logits.shape[1:]
    for k, (row, col) in enumerate(decoded.origins):
        rows, cols = min(height, masks.shape[2] - row), min(width, masks.shape[3] - col)
        masks[k, 0, row:row + rows, col:col + cols] = decoded.logits[k, :rows, :cols]
        if tokens > 1:
            masks[k, 1:, row:row + rows, col:col + cols] = decoded.candidates[k, :, :rows, :cols]
    return DecodedMasks(masks[:, 0], decoded.predicted_iou, decoded.object_score,
                        masks[:, 1:] if tokens > 1 else None, decoded.candidate_iou)


class FastDecoder:
    """SAM2's mask decoder for box prompts over one encoded window (see the module)."""

    def __init__(self, model, device: str):
        import torch

        self.model = model
        self.device = device
        with torch.inference_mode():
            self.dense_pe = model.sam_prompt_encoder.get_dense_pe()

    def decode(self, encoded: Encoded, boxes: np.ndarray, areas: np.ndarray | None, whole_grid: bool) -> DecodedMasks:
        """SAM2's chosen mask for each box, cropped to the cells its area reads (`origins`),
        its predicted IoU and object score, and its other three masks as candidates, in
        SAM2's order. Runs in the caller's inference mode and autocast."""
        import torch

        decoder = self.model.sam_mask_decoder
        count = len(boxes)
        tokens = self.prompt_tokens(encoded, boxes)
        hs, src = self.transformer(encoded, tokens)
        src = src.transpose(1, 2).reshape(count, *encoded.image_embed.shape[1:])
        first = 1 if decoder.pred_obj_scores else 0
        mask_tokens = hs[:, first + 1:first + 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        iou_pred = decoder.iou_prediction_head(hs[:, first, :]).float()
        if decoder.pred_obj_scores:
            object_score = decoder.pred_obj_score_head(hs[:, 0, :])[:, 0].float()
        else:  # what sam2 reports when the model has no object-score head
            object_score = torch.full((count,), 10.0, device=self.device)
        reads = [read_cells(None if areas is None else areas[k], encoded.window_hw) for k in range(count)]
        if whole_grid:
            masks, origins, order = self._decode_whole_grid(encoded, src, hyper_in, iou_pred, reads)
        else:
            masks, origins, order = self._decode_by_area(encoded, src, hyper_in, iou_pred, reads)
        scores = np.take_along_axis(iou_pred.cpu().numpy(), order, axis=1).astype(np.float32)
        return DecodedMasks(masks[:, 0], scores[:, 0], object_score.cpu().numpy().astype(np.float32),
                            masks[:, 1:], scores[:, 1:], origins, (LOW_RES_SIDE, LOW_RES_SIDE))

    def _decode_by_area(self, encoded, src, hyper_in, iou_pred, reads):
        """Each box upscaled over the embedding cells its area needs: (N, 4, h, w) masks,
        the chosen one first, then the others in SAM2's order (NOT_DECODED beyond a box's
        cells), where each box's crop starts (N, 2), and its mask indexes in that order (N, 4)."""
        count = len(reads)
        tokens = hyper_in.shape[1]
        blocks = [(embedding_span(rows), embedding_span(cols)) for rows, cols in reads]
        height = 4 * max(r.stop - r.start for r, _ in blocks)
        width = 4 * max(c.stop - c.start for _, c in blocks)
        masks = np.full((count, tokens, height, width), NOT_DECODED, dtype=np.float32)
        origins = np.array([(4 * r.start, 4 * c.start) for r, c in blocks], dtype=np.int64)
        order = np.empty((count, tokens), dtype=np.int64)
        for k, ((rows, cols), (block_rows, block_cols)) in enumerate(zip(reads, blocks)):
            block = self.upscale(encoded, src[k:k + 1], hyper_in[k:k + 1], block_rows, block_cols)
            read = block[0, :, rows.start - 4 * block_rows.start:rows.stop - 4 * block_rows.start,
                         cols.start - 4 * block_cols.start:cols.stop - 4 * block_cols.start]
            chosen = self._chosen_mask(read.float(), iou_pred[k])
            order[k] = [chosen] + [i for i in range(tokens) if i != chosen]
            values = block[0, order[k]].float().cpu().numpy()
            masks[k, :, :values.shape[1], :values.shape[2]] = values
        return masks, origins, order

    def _decode_whole_grid(self, encoded, src, hyper_in, iou_pred, reads):
        """The batch upscaled over the whole grid at once, each box's choice judged on the
        cells it reads, each box's masks cropped to those cells, all on the device; then one
        transfer. The same result as `_decode_by_area` over the cells read."""
        import torch

        whole = Span(0, EMBEDDING_SIDE)
        masks = self.upscale(encoded, src, hyper_in, whole, whole).float()  # (N, 4, 256, 256)
        count, tokens, side = masks.shape[0], masks.shape[1], masks.shape[-1]
        chosen = self._chosen_masks(masks, iou_pred, reads)
        others = torch.arange(tokens, device=masks.device).expand(count, tokens)
        others = others[others != chosen[:, None]].view(count, tokens - 1)
        order = torch.cat([chosen[:, None], others], dim=1)
        height = max(rows.stop - rows.start for rows, _ in reads)
        width = max(cols.stop - cols.start for _, cols in reads)
        # Each crop starts where its cells do, moved back inside the grid (it still holds them).
        origins = np.array([(min(rows.start, side - height), min(cols.start, side - width)) for rows, cols in reads],
                           dtype=np.int64)
        starts = torch.as_tensor(origins, device=masks.device)
        row_index = starts[:, 0:1] + torch.arange(height, device=masks.device)  # (N, height)
        col_index = starts[:, 1:2] + torch.arange(width, device=masks.device)   # (N, width)
        crops = masks[torch.arange(count, device=masks.device)[:, None, None, None], order[:, :, None, None],
                      row_index[:, None, :, None], col_index[:, None, None, :]]
        return crops.cpu().numpy(), origins, order.cpu().numpy()

    def _chosen_mask(self, read, iou) -> int:
        """MaskDecoder.forward's choice for one single-mask output, from all its masks over
        the cells read (4, h, w), fp32: mask 0, or, when `dynamic_multimask_via_stability`
        finds it unstable there, the multi-mask output with the highest predicted IoU."""
        decoder = self.model.sam_mask_decoder
        if not decoder.dynamic_multimask_via_stability:
            return 0
        if bool(decoder._get_stability_scores(read[0:1])[0] >= decoder.dynamic_multimask_stability_thresh):
            return 0
        return 1 + int(iou[1:].argmax())

    def _chosen_masks(self, masks, iou_pred, reads):
        """`_chosen_mask` for a batch over the whole grid (N, 4, h, w), fp32, on the device:
        the stability of mask 0 counted over each box's cells only."""
        import torch

        decoder = self.model.sam_mask_decoder
        count = masks.shape[0]
        if not decoder.dynamic_multimask_via_stability:
            return torch.zeros(count, dtype=torch.int64, device=masks.device)
        bounds = torch.tensor([[r.start, r.stop, c.start, c.stop] for r, c in reads], device=masks.device)
        cells = torch.arange(masks.shape[-1], device=masks.device)
        in_rows = (cells[None, :] >= bounds[:, 0:1]) & (cells[None, :] < bounds[:, 1:2])
        in_cols = (cells[None, :] >= bounds[:, 2:3]) & (cells[None, :] < bounds[:, 3:4])
        read = in_rows[:, :, None] & in_cols[:, None, :]
        delta = decoder.dynamic_multimask_stability_delta
        first = masks[:, 0]
        intersections = ((first > delta) & read).sum(dim=(-1, -2)).float()
        unions = ((first > -delta) & read).sum(dim=(-1, -2)).float()
        stability = torch.where(unions > 0, intersections / unions.clamp(min=1), torch.ones_like(unions))
        best_other = 1 + iou_pred[:, 1:].argmax(dim=1)
        stable = stability >= decoder.dynamic_multimask_stability_thresh
        return torch.where(stable, torch.zeros_like(best_other), best_other)

    def prompt_tokens(self, encoded: Encoded, boxes: np.ndarray):
        """The decoder's input tokens for box prompts: its output tokens, then each box's two corners."""
        import torch

        model = self.model
        decoder = model.sam_mask_decoder
        height, width = encoded.window_hw
        corners = torch.as_tensor(np.asarray(boxes), dtype=torch.float, device=self.device).reshape(-1, 2, 2)
        # Window pixels -> the model's input frame (the window stretched to side x side).
        corners = corners / torch.tensor([width, height], dtype=torch.float, device=self.device) * model.image_size
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device).repeat(len(corners), 1)
        sparse, _ = model.sam_prompt_encoder(points=(corners, corner_labels), boxes=None, masks=None)
        heads = [decoder.obj_score_token.weight] if decoder.pred_obj_scores else []
        output_tokens = torch.cat(heads + [decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        return torch.cat((output_tokens.unsqueeze(0).expand(len(corners), -1, -1), sparse), dim=1)

    def upscale(self, encoded: Encoded, src, hyper_in, rows: Span, cols: Span):
        """MaskDecoder.predict_masks' upscaling and mask product over embedding `rows` x
        `cols`: (n, masks, 4 * rows, 4 * cols) logits."""
        decoder = self.model.sam_mask_decoder
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = encoded.high_res
        r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
        up = act1(ln1(dc1(src[:, :, r0:r1, c0:c1]) + feat_s1[:, :, 2 * r0:2 * r1, 2 * c0:2 * c1]))
        up = act2(dc2(up) + feat_s0[:, :, 4 * r0:4 * r1, 4 * c0:4 * c1])
        count, channels, height, width = up.shape
        return (hyper_in @ up.view(count, channels, height * width)).view(count, -1, height, width)

    def first_block_projections(self, image_embed) -> dict:
        """What the decoder's first two-way block computes from the image tokens alone: a
        box prompt's dense embedding is the constant no_mask_embed, so these are the same
        for every box of the window. Called inside inference mode and the decoder's autocast."""
        model = self.model
        block = model.sam_mask_decoder.transformer.layers[0]
        no_mask = model.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (image_embed + no_mask).flatten(2).permute(0, 2, 1)
        key_pe = self.dense_pe.flatten(2).permute(0, 2, 1)
        keyed = keys + key_pe
        return {
            "keys": keys,
            "key_pe": key_pe,
            "k": block.cross_attn_token_to_image.k_proj(keyed),
            "v": block.cross_attn_token_to_image.v_proj(keys),
            "q": block.cross_attn_image_to_token.q_proj(keyed),
        }

    def transformer(self, encoded: Encoded, tokens):
        """sam2's TwoWayTransformer.forward for these tokens over the encoded window, with
        the first block's projections of the image tokens taken from encode."""
        import torch.nn.functional as F

        transformer = self.model.sam_mask_decoder.transformer
        first, rest = transformer.layers[0], transformer.layers[1:]
        cached = encoded.first_block
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
