"""The LSTM policy: one categorical decision per step, masked so every sequence is a valid architecture.

The masks mirror ``SearchSpace.choices`` in batched form: inputs come from the pool built so far, the
second input differs from the first, and the output cells' levels form a permutation of the levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from search_spaces.architecture import OPS
from search_spaces.space import DECISION_KINDS, SearchSpace


@dataclass
class PolicyOutput:
    actions: torch.Tensor
    """[batch, num_decisions] chosen values."""
    log_prob: torch.Tensor
    """[batch] log-probability of the whole sequence."""
    entropy: torch.Tensor
    """[batch] sum of the per-step entropies of the masked distributions."""


class LSTMPolicy(nn.Module):
    def __init__(self, space: SearchSpace, hidden_size: int) -> None:
        super().__init__()
        self.space = space
        num_levels = len(space.levels)
        self.start = nn.Parameter(torch.zeros(1, hidden_size))
        self.lstm = nn.LSTMCell(hidden_size, hidden_size)
        # Tells the LSTM which decision it is making, so per-step preferences are easy to learn.
        self.step_embedding = nn.Embedding(space.num_decisions, hidden_size)
        self.embeddings = nn.ModuleList(
            [
                nn.Embedding(space.max_pool_size, hidden_size),  # input_a
                nn.Embedding(space.max_pool_size, hidden_size),  # input_b
                nn.Embedding(num_levels, hidden_size),  # output_level
                nn.Embedding(len(OPS), hidden_size),  # op
            ]
        )
        self.heads = nn.ModuleList(
            [
                nn.Linear(hidden_size, space.max_pool_size),
                nn.Linear(hidden_size, space.max_pool_size),
                nn.Linear(hidden_size, num_levels),
                nn.Linear(hidden_size, len(OPS)),
            ]
        )

    def forward(
        self,
        batch_size: int,
        temperature: float = 1.0,
        actions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PolicyOutput:
        """Sample ``batch_size`` sequences, or score the given ``actions`` (teacher forcing)."""
        space = self.space
        num_levels = len(space.levels)
        device = self.start.device
        x = self.start.expand(batch_size, -1)
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        used_levels = torch.zeros(batch_size, num_levels, dtype=torch.bool, device=device)
        pool_index = torch.arange(space.max_pool_size, device=device)
        chosen: list[torch.Tensor] = []
        log_prob = torch.zeros(batch_size, device=device)
        entropy = torch.zeros(batch_size, device=device)
        for step in range(space.num_decisions):
            cell, kind = divmod(step, len(DECISION_KINDS))
            state = self.lstm(x + self.step_embedding.weight[step], state)
            logits = self.heads[kind](state[0]) / temperature
            mask = self._mask(kind, cell, batch_size, chosen, used_levels, pool_index)
            logits = logits.masked_fill(~mask, float("-inf"))
            log_probs = torch.log_softmax(logits, dim=-1)
            if actions is None:
                action = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)
            else:
                action = actions[:, step].to(device)
            log_prob = log_prob + log_probs.gather(1, action[:, None]).squeeze(1)
            entropy = entropy - (log_probs.exp() * log_probs.masked_fill(~mask, 0.0)).sum(-1)
            if DECISION_KINDS[kind] == "output_level" and cell >= space.num_intermediate:
                used_levels = used_levels | nn.functional.one_hot(action, num_levels).bool()
            chosen.append(action)
            x = self.embeddings[kind](action)
        return PolicyOutput(actions=torch.stack(chosen, dim=1), log_prob=log_prob, entropy=entropy)

    def _mask(
        self,
        kind: int,
        cell: int,
        batch_size: int,
        chosen: list[torch.Tensor],
        used_levels: torch.Tensor,
        pool_index: torch.Tensor,
    ) -> torch.Tensor:
        space = self.space
        name = DECISION_KINDS[kind]
        if name in ("input_a", "input_b"):
            mask = (pool_index < len(space.levels) + cell).expand(batch_size, -1)
            if name == "input_b":
                mask = mask & (pool_index[None, :] != chosen[-1][:, None])
            return mask
        if name == "output_level":
            if cell >= space.num_intermediate:
                return ~used_levels
            return torch.ones_like(used_levels)
        return torch.ones(batch_size, len(OPS), dtype=torch.bool, device=used_levels.device)
