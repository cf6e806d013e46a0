"""Integrations with other libraries, above the backend: nothing in avo_inductor imports them.

``avo_inductor.integrations.transformers``: ``attn_implementation="avo"`` runs store kernels without torch.compile.
"""
