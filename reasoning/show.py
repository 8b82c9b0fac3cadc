"""Pictures: a denoising trajectory as a step × position grid, and a run's curves.

    dlmrl show runs/NAME                    # curves.png (+ trajectory pictures of the newest rollouts)
    dlmrl show runs/NAME/rollouts/step_000010.jsonl [--index 3]

Trajectory picture: row t is the canvas the model saw at step t (· = [MASK]); a cell
committed at t is coloured by the probability the model gave that token, a re-mask is
marked red, a pinned token (a hint from the reference answer, rollout.hints) orange, a branch
point (rollout.branching) by a magenta dashed line. The title says the decoding (latent-thinking
passes per step, forwards) and whether it was hinted. With branches, `<file>_<index>_tree.png`
draws the answer's prompt's whole tree.
"""

from __future__ import annotations

import glob
import html
import json
import os

import numpy as np

from rollouts import Trajectory


def _token_text(tokenizer, token: int, mask_id: int) -> str:
    if token == mask_id:
        return "·"
    if tokenizer is None:
        return str(token)
    text = tokenizer.convert_ids_to_tokens(int(token))
    return {"[EOS]": "∎", "[PAD]": "_", "<answer>": "⟨a", "</answer>": "a⟩", "<think>": "⟨t", "</think>": "t⟩"}.get(
        text, text)


def trajectory_grid(traj: Trajectory) -> dict:
    """Per step: the canvas, what was committed (with probability) and what was re-masked."""
    states = traj.states()
    committed = np.full((traj.num_steps, traj.gen_length), np.nan)
    remasked = np.zeros((traj.num_steps, traj.gen_length), dtype=bool)
    for step, position, token, logp in zip(traj.event_step, traj.event_position, traj.event_token, traj.event_logp):
        if token == traj.mask_id:
            remasked[step, position] = True
        else:
            committed[step, position] = float(np.exp(logp))
    pinned = np.zeros(traj.gen_length, dtype=bool)
    pinned[traj.pinned_position] = True
    return {"states": states[:-1], "committed": committed, "remasked": remasked, "pinned": pinned}


def plot_trajectory(traj: Trajectory, tokenizer, path_png: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = trajectory_grid(traj)
    steps, length = grid["committed"].shape
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * length + 2), max(3, 0.35 * steps + 1.5)))
    shown = np.ma.masked_invalid(grid["committed"])
    image = ax.imshow(shown, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for t in range(steps):
        for p in range(length):
            token = grid["states"][t, p]
            if not np.isnan(grid["committed"][t, p]):
                token = traj.event_token[(traj.event_step == t) & (traj.event_position == p)][-1]
            color = "red" if grid["remasked"][t, p] else ("white" if not np.isnan(grid["committed"][t, p]) else
                                                          "darkorange" if grid["pinned"][p] else "gray")
            ax.text(p, t, _token_text(tokenizer, token, traj.mask_id), ha="center", va="center", fontsize=7,
                    color=color, fontweight="bold" if not np.isnan(grid["committed"][t, p]) else "normal")
    ax.set_xticks(range(length))
    ax.set_yticks(range(steps))
    ax.set_xlabel("answer position")
    ax.set_ylabel("denoising step")
    hinted = f", {len(traj.pinned_position)} hint tokens (orange)" if traj.hinted else ""
    branch = ""
    for point in traj.branch_steps:  # rows above a dashed line were drawn by an ancestor path (shared)
        ax.axhline(point - 0.5, color="magenta", linestyle="--", linewidth=1.2)
    if traj.branch_step:
        branch = f", branch from step {traj.branch_step} (magenta: branch points)"
    ax.set_title((title + "\n" if title else "") +
                 f"{steps} steps, {traj.forward_passes} forwards, {traj.num_remasks} re-masks{hinted}{branch}")
    fig.colorbar(image, ax=ax, label="p(committed token)")
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)
    plt.close(fig)


def trajectory_html(traj: Trajectory, tokenizer, title: str = "") -> str:
    """A self-contained HTML table of the same picture (no scripts, no external files)."""
    grid = trajectory_grid(traj)
    rows = []
    for t in range(grid["committed"].shape[0]):
        cells = []
        for p in range(traj.gen_length):
            prob = grid["committed"][t, p]
            if grid["remasked"][t, p]:
                style, tip = "background:#f8d0d0;color:#b00", "re-masked"
                token = traj.mask_id
            elif not np.isnan(prob):
                shade = int(255 - 155 * prob)
                style, tip = f"background:rgb({shade},{shade},255);font-weight:bold", f"p={prob:.3f}"
                token = traj.event_token[(traj.event_step == t) & (traj.event_position == p)][-1]
            elif grid["pinned"][p]:
                style, tip, token = "background:#ffe0a0;color:#a50", "hint (pinned)", grid["states"][t, p]
            else:
                style, tip, token = "color:#999", "", grid["states"][t, p]
            text = html.escape(_token_text(tokenizer, token, traj.mask_id))
            cells.append(f'<td style="{style}" title="{tip}">{text}</td>')
        mark = ' style="border-top:3px dashed magenta"' if t in set(traj.branch_steps.tolist()) else ""
        rows.append(f"<tr{mark}><th>{t}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{p}</th>" for p in range(traj.gen_length))
    prompt = html.escape(tokenizer.decode(traj.prompt_ids) if tokenizer is not None else str(traj.prompt_ids))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>dlmrl trajectory</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ddd;"
        "padding:2px 5px;text-align:center;font-family:monospace}</style></head><body>"
        f"<h3>{html.escape(title)}</h3><p>prompt: <code>{prompt}</code> · {traj.num_steps} steps · "
        f"{traj.forward_passes} forwards · {traj.num_remasks} re-masks · policy version {traj.policy_version}"
        f"{' · hinted: ' + str(len(traj.pinned_position)) + ' hint tokens' if traj.hinted else ''}</p>"
        f"<table><tr><th>step</th>{head}</tr>{''.join(rows)}</table>"
        "<p>bold = committed at that step (blue: the model's probability), red = re-masked, "
        "orange = hint (pinned), · = [MASK]; a magenta dashed line = a branch point (the rows above it are "
        "shared with the path this one branched from)</p>"
        "</body></html>"
    )


def read_trajectories(path: str) -> list[Trajectory]:
    """A rollouts JSONL file -> trajectories; a ValueError naming the file and line for a line that
    is not a saved trajectory."""
    from reasoning.tasks.files import file_kind

    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"'{path}' is {file_kind(path)}, not a saved rollouts file")
    if os.path.exists(path) and os.path.getsize(path) > MAX_ROLLOUTS_BYTES:
        raise ValueError(f"'{path}' is {os.path.getsize(path)} bytes; a saved rollouts file of at most "
                         f"{MAX_ROLLOUTS_BYTES} is shown")
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError(f"expected a JSON object, got {type(row).__name__}")
                out.append(check_drawable(Trajectory.from_json(row)))
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                raise ValueError(f"'{path}' line {number} is not a saved trajectory ({str(exc)[:120]})") from None
    return out


MAX_ROLLOUTS_BYTES = 1 << 30
MAX_DRAWN_CELLS = 1 << 24  # steps x positions of one drawn grid


def check_drawable(traj: Trajectory) -> Trajectory:
    """What the grid indexes by is in range (a hand-edited or foreign file must not become a traceback)."""
    length, steps = int(traj.gen_length), len(traj.selection_logp)
    if not 1 <= length or length * max(steps, 1) > MAX_DRAWN_CELLS:
        raise ValueError(f"gen_length {length} with {steps} steps is more than {MAX_DRAWN_CELLS} cells to draw")
    if len(traj.final_tokens) != length:
        raise ValueError(f"final_tokens holds {len(traj.final_tokens)} tokens for gen_length {length}")
    events = {len(traj.event_step), len(traj.event_position), len(traj.event_token), len(traj.event_logp)}
    if len(events) != 1:
        raise ValueError("the event_* lists differ in length")
    for name, values, bound in (("event_position", traj.event_position, length),
                                ("pinned_position", traj.pinned_position, length), ("event_step", traj.event_step, steps)):
        outside = values[(values < 0) | (values >= bound)]
        if len(outside):
            raise ValueError(f"{name} holds {int(outside[0])}, outside [0, {bound})")
    return traj


def show_trajectories(path: str, tokenizer=None, index: int = 0) -> list[str]:
    """PNG + HTML next to a rollouts JSONL file; returns the written paths."""
    trajectories = read_trajectories(path)
    if not trajectories:
        raise ValueError(f"'{path}' holds no trajectories")
    if not 0 <= index < len(trajectories):
        raise ValueError(f"--index {index} is out of range: '{path}' holds {len(trajectories)} trajectories")
    traj = trajectories[index]
    stem = os.path.splitext(path)[0] + f"_{index}"
    title = f"{os.path.basename(path)} #{index}"
    plot_trajectory(traj, tokenizer, stem + ".png", title)
    with open(stem + ".html", "w") as fh:
        fh.write(trajectory_html(traj, tokenizer, title))
    written = [stem + ".png", stem + ".html"]
    tree = [t for t in trajectories if t.prompt_index == traj.prompt_index]
    if any(t.branch_step for t in tree):
        written.append(plot_tree(tree, tokenizer, stem + "_tree.png", title))
    return written


def plot_tree(tree: list[Trajectory], tokenizer, path_png: str, title: str = "") -> str:
    """One prompt's tree (rollout.branching): a line per answer over its denoising steps, starting where
    it left the path it branched from (a magenta dot, the branch point), labelled with its answer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(tree, key=lambda t: tuple(t.owners().tolist()))  # branches next to their parents
    row = {t.seed: y for y, t in enumerate(order)}
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.32 * len(order) + 1.2)))
    for y, t in enumerate(order):
        start = t.branch_step
        if start:
            parent_y = row.get(int(t.branch_seeds[-1]), y)
            ax.plot([start - 1, start], [parent_y, y], color="magenta", linewidth=1)
            ax.plot([start - 1], [parent_y], "o", color="magenta", markersize=4)
        ax.plot([start, t.num_steps], [y, y], color="tab:blue" if not start else "tab:purple", linewidth=2)
        answer = "".join(_token_text(tokenizer, int(k), t.mask_id) for k in t.final_tokens)
        ax.text(t.num_steps + 0.2, y, answer, va="center", fontsize=7, family="monospace")
    ax.set_xlabel("denoising step")
    ax.set_yticks(range(len(order)), [f"#{t.sample_index}" for t in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_title((title + "\n" if title else "") + f"prompt {tree[0].prompt_index}: {len(tree)} answers, "
                 f"{sum(1 for t in tree if t.branch_step)} branches", fontsize=9)
    fig.tight_layout()
    fig.savefig(path_png, dpi=110)
    plt.close(fig)
    return path_png


# (panel title, metric names drawn in it; eval/*/acc = every task's held-out accuracy)
CURVES = (("reward (train rollouts)", ("reward",)), ("held-out accuracy", ("eval/*/acc",)),
          ("learning signal (fraction of groups)", ("train/informative_fraction", "train/all_fail_fraction",
                                                    "train/all_pass_fraction")),
          ("hints", ("hints/success_rate", "hints/ratio_mean")), ("dynamic sampling", ("dynamic/draw_factor",)),
          ("KL to reference", ("kl",)), ("loss", ("loss",)))


def plot_run(run_dir: str) -> str:
    """curves.png from metrics.jsonl: reward, eval accuracy, the learning signal (informative / all-fail
    / all-pass groups), hints, dynamic sampling, KL and loss against the step (panels with data only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"'{run_dir}' has no metrics.jsonl (not a dlmrl run directory)")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    raise ValueError(f"'{path}' line {number} is not valid JSON") from None
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError(f"'{path}' line {number}: expected a JSON object with an integer 'step'")
                rows.append(row)
    panels = {}
    for label, keys in CURVES:
        lines = {}
        for key in keys:
            for row in rows:
                for name, value in row.items():
                    matches = name == key or (key == "eval/*/acc" and name.startswith("eval/") and name.endswith("/acc"))
                    if matches and isinstance(value, (int, float)):
                        lines.setdefault(name, []).append((row["step"], value))
        if lines:
            panels[label] = lines
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.2), squeeze=False)
    for ax, (label, lines) in zip(axes[0], panels.items()):
        for name, points in lines.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
        if len(lines) > 1:
            ax.legend(fontsize=6)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out = os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# (metric name, label, colour); `trainer_rollout`: chunks the waiting trainer sampled itself (async)
TIMELINE_LANES = (("rollout", "rollout", "tab:blue"), ("trainer_rollout", "rollout by trainer", "tab:cyan"),
                  ("update", "update", "tab:orange"), ("sync", "sync", "tab:green"))


def plot_timeline(run_dirs: list[str], out: str | None = None, first_step: int = 5, steps: int = 8) -> str:
    """timeline.png: when each step's rollout, update and weight sync ran (the `timeline/*`
    metrics), one panel per run — synchronous runs show them in sequence, asynchronous ones the
    rollout of step k+1 under the update of step k. Steps before `first_step` (warm-up) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(run_dirs), 1, figsize=(10, 1.6 + 1.6 * len(run_dirs)), squeeze=False)
    for ax, run_dir in zip(axes[:, 0], run_dirs):
        with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
            timed = [r for r in map(json.loads, filter(str.strip, fh)) if "timeline/update_start" in r]
        rows = [r for r in timed if first_step <= r["step"] < first_step + steps] or timed[-steps:]  # short run: its last
        if not rows:
            raise ValueError(f"'{run_dir}' has no timeline/* metrics for steps {first_step}..{first_step + steps - 1}")
        origin = min(r["timeline/update_start"] for r in rows)  # the first shown update; earlier bars are cut
        end = max(r["timeline/update_end"] for r in rows) - origin
        top = len(TIMELINE_LANES) - 1
        for lane, (name, _, colour) in enumerate(TIMELINE_LANES):
            for r in rows:
                if f"timeline/{name}_start" not in r:
                    continue
                start, stop = r[f"timeline/{name}_start"] - origin, r[f"timeline/{name}_end"] - origin
                if stop < 0:
                    continue
                start = max(start, 0.0)
                ax.broken_barh([(start, max(stop - start, end / 400))], (top - lane - 0.35, 0.7), color=colour)
                if name != "sync" and stop - start > end / 40:
                    ax.text(start + (stop - start) / 2, top - lane, str(r["step"]), ha="center", va="center",
                            fontsize=7, color="white")
        ax.set_yticks(range(top, -1, -1), [label for _, label, _ in TIMELINE_LANES])
        ax.set_xlim(0, end * 1.01)
        rate = (len(rows) - 1) / (rows[-1]["timeline/update_end"] - rows[0]["timeline/update_end"]) \
            if len(rows) > 1 else float("nan")
        ax.set_title(f"{os.path.basename(os.path.normpath(run_dir))}: {rate:.2f} steps/s", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    out = out or os.path.join(run_dirs[0], "timeline.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_run(run_dir: str, tokenizer) -> None:
    """curves.png, timeline.png and pictures of the first and last saved rollouts (best effort:
    never fails a run)."""
    try:
        plot_run(run_dir)
        plot_timeline([run_dir])
        saved = sorted(glob.glob(os.path.join(run_dir, "rollouts", "*.jsonl")))
        for path in saved[:1] + saved[-1:] if len(saved) > 1 else saved:
            show_trajectories(path, tokenizer)
    except Exception as exc:  # noqa: BLE001 — a picture is not worth losing a finished run
        print(f"could not draw pictures: {exc}")
