"""Mixture of experts: a router sends each token to k of E feed-forward networks (gpt.py's MLP).

The feed-forward layer holds two thirds of a transformer's weights; a MoE layer multiplies them by E
while each token still pays for only k experts, so parameters grow without FLOPs per token growing
(Switch Transformer: k = 1; Mixtral: E = 8, k = 2). GPTConfig(n_experts=E, moe_top_k=k) puts one in
every block instead of the MLP.

    from mixture_of_experts import MoE, load_balancing_loss
    moe = MoE(dim=128, n_experts=4, top_k=2, make_expert=lambda: MLP(cfg))
    out, aux = moe(x)                  # x (B, T, d) -> out (B, T, d), aux: the load-balancing loss

Interview questions it answers:
- What does a MoE router's auxiliary loss do? (pushes the fraction of tokens sent to each expert
  towards uniform, so no expert starves and none is overloaded)
- Why renormalize the top-k router probabilities? (the k chosen weights then sum to 1, so the output
  has the scale of one expert whatever the router's confidence)
- Why must every expert run, even on zero tokens, under DDP? (an expert left out of the autograd graph
  gets no gradient, and DDP's all-reduce waits for it forever)
"""

import torch
import torch.nn as nn


def load_balancing_loss(probs, top_idx, n_experts):
    """Switch-Transformer auxiliary loss: n_experts · Σ_i f_i · P_i.

    f_i = fraction of routing slots (tokens × k) that go to expert i (counted, no gradient);
    P_i = mean router probability of expert i (differentiable). Both are 1/E at a uniform load,
    where the loss is 1, its minimum when the router is balanced.  probs (N, E), top_idx (N, k).
    """
    # >>> exercise: n_experts · Σ_i f_i·P_i; f_i = share of routing slots on expert i, P_i = mean router prob
    f = torch.bincount(top_idx.flatten(), minlength=n_experts).float() / top_idx.numel()  # (E,)
    P = probs.float().mean(dim=0)  # (E,)
    return n_experts * (f * P).sum()
    # <<< exercise


class MoE(nn.Module):
    """Mixture of experts: a router picks k of E experts per token; their outputs are mixed by the
    router's renormalized probabilities. Capacity-free: every token reaches its k experts, none is
    dropped. Each expert only runs on the tokens routed to it, so compute per token is k experts, not E."""

    def __init__(self, dim, n_experts, top_k, make_expert):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))

    def forward(self, x):
        """Returns (output like x, auxiliary load-balancing loss)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d)
        probs = self.router(x).float().softmax(dim=-1)  # (N, E)
        top_p, top_idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = (top_p / top_p.sum(dim=-1, keepdim=True)).to(x.dtype)  # (N, k)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            # run it even on zero tokens: every parameter then stays in the autograd graph, which DDP
            # requires (an unused parameter would leave its gradient all-reduce waiting)
            token, slot = (top_idx == e).nonzero(as_tuple=True)  # tokens routed to e
            out.index_add_(0, token, weights[token, slot, None] * expert(x[token]))
        return out.view(shape), load_balancing_loss(probs, top_idx, len(self.experts))
