"""The DeiT layout (a plain ViT with a class token) that takes a token mixer.

Families that replace DeiT's softmax attention (InLine-DeiT, ...) are this layout with their mixer. It is timm's
`VisionTransformer` as DeiT uses it, built from timm's pieces (`PatchEmbed`, `Mlp`, `DropPath`,
`resample_abs_pos_embed`), with one difference: the blocks get the token grid, because mixers with a local term
(InLine's 3x3 residual) need it and `prefix + H * W` tokens do not say H and W. The mixer interface:

    mixer_layer(dim, num_heads, block) -> nn.Module
    mixer(x: [B, prefix + H * W, dim], grid: [H, W]) -> [B, prefix + H * W, dim]   # prefix tokens first

Pieces: a 16x16 non-overlapping patch embedding (a map that does not divide is zero-padded bottom/right to whole
patches), the class token, a learnable absolute position embedding over the class token and the build-size grid
(resampled bicubically by timm's `resample_abs_pos_embed` at other sizes, exact at the build size), pre-norm blocks
`x + attn(norm1(x), grid)`, `x + mlp(norm2(x))`, the final norm and a linear head on the class token (`token`
pooling; `avg` averages the patch tokens).

The contract is timm's for a plain ViT (`VisionTransformer`): `forward_features` returns the normalised tokens
`[B, 1 + H * W, C]`, `forward_intermediates` the blocks' patch tokens as NCHW maps (or NLC, optionally with the
class token), `prune_intermediate_layers` cuts blocks, `feature_info` lists every block at reduction 16 and
`features_only` goes through `forward_intermediates` (timm's getter). State-dict layout (timm's and the releases'):
`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.{i}.{norm1, attn.*, norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`.
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, PatchEmbed, register_notrace_function, resample_abs_pos_embed, to_2tuple
from timm.layers import trunc_normal_

from hiervit.backbones._compat import feature_take_indices
from hiervit.backbones.layers.skeleton import stem_input

__all__ = ['DeiTLayout', 'DeiTBlock', 'TokenMixerFactory', 'resize_token_pos_embed']

TokenMixerFactory = Callable[[int, int, int], nn.Module]


@register_notrace_function
def resize_token_pos_embed(pos_embed: torch.Tensor, grid: List[int], H: int, W: int) -> torch.Tensor:
    """`pos_embed [1, 1 + h * w, C]` (class token first) of the build-size grid `grid` for an `H x W` grid: itself at
    the build size, else resampled (timm's `resample_abs_pos_embed`, bicubic). An FX leaf: it decides on sizes."""
    if grid[0] == H and grid[1] == W:
        return pos_embed
    return resample_abs_pos_embed(pos_embed, (H, W), (grid[0], grid[1]), num_prefix_tokens=1)


torch.fx.wrap('resize_token_pos_embed')  # a leaf for plain torch.fx.symbolic_trace too
torch.fx.wrap('stem_input')  # imported from the skeleton: a leaf under this module's name too


class DeiTBlock(nn.Module):
    """Pre-norm ViT block around a token mixer that takes the grid: `x + attn(norm1(x), grid)`, `x + mlp(norm2(x))`."""

    def __init__(
            self,
            dim: int,
            mixer: nn.Module,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DeiTLayout(nn.Module):
    """The DeiT layout around a token mixer; see the module docstring for the pieces, the mixer interface and the
    contract."""

    def __init__(
            self,
            mixer_layer: TokenMixerFactory,
            img_size: Union[int, Sequence[int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 3,
            mlp_ratio: float = 4.,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
    ):
        """
        Args:
            mixer_layer: The mixer factory `(dim, num_heads, block) -> module` (see the module docstring).
            img_size: Build size: fixes the position embedding (resampled at other sizes).
            patch_size: Patch side.
            in_chans: Input image channels.
            num_classes: Classifier outputs (0: no classifier).
            global_pool: Head pooling: 'token' (the class token), 'avg' (mean of the patch tokens) or '' (none).
            embed_dim: Token width.
            depth: Blocks.
            num_heads: Attention heads (passed to the mixer factory).
            mlp_ratio: MLP hidden width / dim.
            drop_rate: Dropout after the position embedding and before the classifier.
            proj_drop_rate: Dropout in the MLPs (mixers take their own).
            drop_path_rate: Stochastic depth rate, increased linearly over the blocks.
            norm_layer: Block and final norm (LayerNorm with eps 1e-6, as DeiT).
        """
        super().__init__()
        self._check_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_prefix_tokens = 1
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(
            img_size=to_2tuple(img_size), patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            output_fmt='NHWC', strict_img_size=False, dynamic_img_pad=True)
        self.grid_size = list(self.patch_embed.grid_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.ModuleList([
            DeiTBlock(embed_dim, mixer_layer(embed_dim, num_heads, i), mlp_ratio=mlp_ratio, proj_drop=proj_drop_rate,
                      drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)])
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in ('', 'avg', 'token'):
            raise ValueError(f"global_pool must be 'token', 'avg' or '' (none), got {global_pool!r}.")

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
        """Image `[B, C, H, W]` -> tokens `[B, 1 + h * w, dim]` (class token first, position embedding added) and the
        grid `[h, w]`."""
        x = stem_input(x, self.in_chans, 'This DeiT-layout model')
        x = self.patch_embed(x)  # [B, h, w, dim]
        B, H, W, C = x.shape
        grid = [H, W]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, H * W, C)], dim=1)
        x = x + resize_token_pos_embed(self.pos_embed, self.grid_size, H, W)
        return self.pos_drop(x), grid

    def forward_blocks(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, grid, use_reentrant=False)
            else:
                x = blk(x, grid)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self.forward_tokens(x)
        return self.norm(self.forward_blocks(x, grid))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[Any], Tuple[torch.Tensor, List[Any]]]:
        """Block outputs, as timm's `VisionTransformer.forward_intermediates`.

        Args:
            x: Image `[B, C, H, W]`.
            indices: Blocks to return: the last n if an int, all if None, else the given (negative allowed).
            return_prefix_tokens: Return `(patch tokens, class token)` pairs.
            norm: Apply the final norm to every returned output.
            stop_early: Run no block after the last one returned.
            output_fmt: 'NCHW' (patch tokens as maps) or 'NLC' (as tokens).
            intermediates_only: Return only the intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self.forward_tokens(x)
        B = x.shape[0]
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, grid, use_reentrant=False)
            else:
                x = blk(x, grid)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == 'NCHW':
            # [B, h * w, C] -> [B, C, h, w]
            intermediates = [
                y.reshape(B, grid[0], grid[1], y.shape[-1]).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last of `indices` (and the final norm, the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices
