"""Role names: stable strings shared by placement, config, calibration files and reports."""

LINEAR_INPUT = "linear.input"
LINEAR_WEIGHT = "linear.weight"
ATTN_Q = "attn.q"
ATTN_K = "attn.k"
ATTN_V = "attn.v"
ATTN_PROBS = "attn.probs"
LAYER_NORM_OUTPUT = "layer_norm.output"
CONV_INPUT = "conv.input"
CONV_WEIGHT = "conv.weight"

ALL_ROLES = (LINEAR_INPUT, LINEAR_WEIGHT, ATTN_Q, ATTN_K, ATTN_V, ATTN_PROBS, LAYER_NORM_OUTPUT, CONV_INPUT, CONV_WEIGHT)
WEIGHT_ROLES = frozenset({LINEAR_WEIGHT, CONV_WEIGHT})
# Softmax output lies in [0, 1]: TensorRT's FP8 attention wants the fixed scale 1/448.
FIXED_AMAX = {ATTN_PROBS: 1.0}


def field_name(role: str) -> str:
    """'attn.q' -> 'attn_q', the matching RoleSpecs field."""
    return role.replace(".", "_")


def check_role(role: str) -> str:
    if role not in ALL_ROLES:
        import difflib

        close = difflib.get_close_matches(role, ALL_ROLES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown role '{role}'.{hint} Known roles: {', '.join(ALL_ROLES)}")
    return role
