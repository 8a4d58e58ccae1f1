"""Blocks shared by several families (anything timm.layers does not already provide)."""
