"""Blocks shared by several families (anything timm.layers does not already provide)."""
from .neighborhood import NeighborhoodAttention2d

__all__ = ['NeighborhoodAttention2d']
