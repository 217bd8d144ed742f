"""Writes notebooks/*.ipynb with outputs cleared: `python notebooks/make_notebooks.py` from the repository root."""

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

md, code = new_markdown_cell, new_code_cell


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    })
    for n, cell in enumerate(nb.cells):  # stable ids: no diff noise when regenerated
        cell["id"] = f"{name}-{n}"
    nbformat.validate(nb)
    nbformat.write(nb, pathlib.Path("notebooks") / f"{name}.ipynb")


write("quickstart", [
    md("# lstmjax quickstart\n\n"
       "A cell is a tuple of pure functions (`init`, `step`, ...); `lj.unroll` runs it over a sequence "
       "with `lax.scan`, the same weights at every step, so `jit`, `vmap` and `grad` compose with it.\n\n"
       "Build an LSTM, unroll it, train it, look at its gates and at its gradient back through time. "
       "Runs in a few seconds on a CPU."),
    code("%matplotlib inline\n"
         "import jax\n"
         "import jax.numpy as jnp\n"
         "import matplotlib.pyplot as plt\n"
         "import optax\n\n"
         "import lstmjax as lj"),
    md("## Build and unroll\n\n"
       "Sequences are time-major: `xs` has shape `(T, batch, input_size)`. The LSTM's state is "
       "`lj.LSTMState(h, c)`: `h` the short-term memory (also the output), `c` the long-term memory."),
    code("cell = lj.lstm(hidden_size=16)                              # forget-gate bias 1.0 by default\n"
         "params = cell.init(jax.random.PRNGKey(0), input_size=3)\n"
         "xs = jax.random.normal(jax.random.PRNGKey(1), (50, 8, 3))  # (T, batch, input_size)\n\n"
         "final_state, ys = lj.unroll(cell, params, xs)\n"
         "print(\"ys:\", ys.shape, \" h:\", final_state.h.shape, \" c:\", final_state.c.shape)\n\n"
         "# Variable lengths: outputs past each end are zero, the final state is the last real step's.\n"
         "lengths = jnp.array([50, 10, 0, 25, 50, 3, 7, 49])\n"
         "final_state, ys = lj.unroll(cell, params, xs, lengths=lengths)\n"
         "print(\"outputs after step 10 of sequence 1 are zero:\", bool(jnp.all(ys[10:, 1] == 0)))"),
    md("## Train in ten lines\n\n"
       "The loss is a plain function of the parameters, so any Optax optimizer trains it. The task: "
       "output, at the last step, the first input seen 50 steps earlier."),
    code("targets = xs[0, :, 0]\n\n"
         "def loss_fn(params, xs, targets):\n"
         "    _, ys = lj.unroll(cell, params, xs)\n"
         "    return jnp.mean((ys[-1, :, 0] - targets) ** 2)\n\n"
         "optimizer = optax.adam(1e-2)\n"
         "opt_state = optimizer.init(params)\n\n"
         "@jax.jit\n"
         "def train_step(params, opt_state):\n"
         "    loss, grads = jax.value_and_grad(loss_fn)(params, xs, targets)\n"
         "    updates, opt_state = optimizer.update(grads, opt_state)\n"
         "    return optax.apply_updates(params, updates), opt_state, loss\n\n"
         "losses = []\n"
         "for _ in range(200):\n"
         "    params, opt_state, loss = train_step(params, opt_state)\n"
         "    losses.append(float(loss))\n"
         "print(f\"loss: {losses[0]:.4f} -> {losses[-1]:.4f}\")\n\n"
         "fig, ax = plt.subplots(figsize=(5, 3))\n"
         "ax.semilogy(losses)\n"
         "ax.set(xlabel=\"Adam step\", ylabel=\"training loss (MSE)\", title=\"Remember the first input for 50 steps\");"),
    md("## The gates, step by step\n\n"
       "`lj.unroll_with_internals` also returns every gate and memory at every step: `f` the forget gate "
       "(the fraction of the long-term memory kept), `i` the input gate, `g` the candidate (potential "
       "long-term memory), `o` the output gate, and the memories `c` and `h`."),
    code("_, _, internals = lj.unroll_with_internals(cell, params, xs)\n"
         "fig, ax = plt.subplots(figsize=(7, 3))\n"
         "for name in (\"f\", \"i\", \"o\"):\n"
         "    ax.plot(getattr(internals, name)[:, 0].mean(axis=-1), label=f\"gate {name} (mean over units)\")\n"
         "ax.set(xlabel=\"step t\", ylabel=\"gate value\", ylim=(0, 1), title=\"Sequence 0 after training\")\n"
         "ax.legend();"),
    md("## The gradient back through time\n\n"
       "`lj.gradient_norms_over_time` gives ‖∂L/∂h_t‖ (and, for the LSTM, ‖∂L/∂c_t‖) for every step t, for "
       "any scalar loss of the outputs. The [vanishing-gradient notebook](vanishing_gradients.ipynb) "
       "compares cells this way."),
    code("def last_output_loss(ys):\n"
         "    return jnp.mean((ys[-1, :, 0] - targets) ** 2)\n\n"
         "norms = lj.gradient_norms_over_time(cell, params, xs, last_output_loss)\n"
         "fig, ax = plt.subplots(figsize=(7, 3))\n"
         "ax.semilogy(norms.state.h.mean(axis=1), label=r\"$\\|\\partial L/\\partial h_t\\|$\")\n"
         "ax.semilogy(norms.state.c.mean(axis=1), label=r\"$\\|\\partial L/\\partial c_t\\|$\")\n"
         "ax.set(xlabel=\"step t\", title=\"Gradient reaching each step (mean over the batch)\")\n"
         "ax.legend();"),
    md("More in the [README](../README.md): stacks and bidirectional layers, masks and resets, "
       "the `lj.fit` training loop with checkpoints, PyTorch weights, Flax modules."),
])


write("statquest", [
    md("# The StatQuest LSTM, step by step\n\n"
       "This notebook follows the StatQuest video *Long Short-Term Memory (LSTM), Clearly Explained* "
       "with lstmjax: the video's one-unit LSTM, its weights, its two companies and its worked example. "
       "Everything it computes comes from `lstmjax` and `experiments.statquest` "
       "(`python -m experiments.statquest` runs the same thing from the command line).\n\n"
       "**Two memories.** An LSTM carries two numbers from one day to the next:\n\n"
       "* the **long-term memory** `c` (the cell state, the green line across the top of the video's "
       "diagram): no weights act on it directly, so it can carry information across many steps "
       "without the gradient vanishing;\n"
       "* the **short-term memory** `h` (the hidden state, the pink line along the bottom): it is also "
       "the unit's output.\n\n"
       "**Three stages, three gates.** Each gate is a sigmoid, a number between 0 and 1, which the video "
       "reads as a *percentage*:\n\n"
       "1. the **forget gate** `f` decides what % of the long-term memory to remember;\n"
       "2. the **input gate** `i` decides what % of the *potential long-term memory* `g` (a tanh of "
       "the input and the short-term memory, between −1 and 1) to add to it;\n"
       "3. the **output gate** `o` decides what % of the *potential short-term memory* `tanh(c)` "
       "becomes the new short-term memory `h`, the output."),
    code("%matplotlib inline\n"
         "import jax.numpy as jnp\n"
         "from IPython.display import Image, display\n\n"
         "import lstmjax as lj\n"
         "from experiments import _statquest_report as report\n"
         "from experiments import statquest as sq"),
    md("## The video's weights\n\n"
       "Each gate has a weight on the short-term memory `h`, a weight on the input `x` and a bias. "
       "`params_from_table` puts the video's table into lstmjax's parameter layout "
       "(`lj.LSTMParams`, gate blocks in the order i, f, g, o)."),
    code("for gate, (w_h, w_x, b) in sq.VIDEO_WEIGHTS.items():\n"
         "    print(f\"{gate:>9}: weight on h {w_h:5.2f}, weight on x {w_x:5.2f}, bias {b:5.2f}\")\n\n"
         "video_params = sq.params_from_table(sq.VIDEO_WEIGHTS)\n"
         "video_params"),
    md("## The two companies\n\n"
       "The stock prices of Company A and Company B over five days, scaled to [0, 1], differ only on "
       "day 1. The unit reads days 1 to 4; its short-term memory after day 4 is its prediction for "
       "day 5, which should be 0 for Company A and 1 for Company B. So the unit has to remember day 1 "
       "for three more days."),
    code("for company, (days, target) in sq.COMPANIES.items():\n"
         "    print(f\"Company {company}: days 1-4 {days}, day 5 (the target) {target}\")"),
    md("## Day 1 of Company A, stage by stage\n\n"
       "Both memories start at 0. `lj.unroll_with_internals` returns every gate and both memories "
       "after every day."),
    code("inputs, target = sq.COMPANIES[\"A\"]\n"
         "xs = jnp.array(inputs)[:, None]                     # (T = 4 days, input size 1)\n"
         "_, ys, internals = lj.unroll_with_internals(sq.UNIT, video_params, xs)\n\n"
         "day = 0\n"
         "print(f\"input x = {inputs[day]}\")\n"
         "print(f\"1. forget gate f = {100 * float(internals.f[day, 0]):.1f}% of the long-term memory is remembered\")\n"
         "print(f\"2. input gate  i = {100 * float(internals.i[day, 0]):.1f}% of the potential long-term memory \"\n"
         "      f\"g = {float(internals.g[day, 0]):.4f} is added\")\n"
         "print(f\"   -> new long-term memory c = {float(internals.c[day, 0]):.4f}\")\n"
         "print(f\"3. output gate o = {100 * float(internals.o[day, 0]):.1f}% of the potential short-term \"\n"
         "      f\"memory tanh(c) becomes the output\")\n"
         "print(f\"   -> new short-term memory h = {float(internals.h[day, 0]):.4f}\")"),
    md("## All four days, both companies\n\n"
       "`day_by_day` unrolls the unit over each company; the last short-term memory is the prediction. "
       "With the video's weights it predicts about 0 for Company A and about 1 for Company B: day 1 is "
       "remembered in the long-term memory (Company B's `c` grows to 2.4, Company A's stays near 0)."),
    code("video_days = sq.day_by_day(video_params)\n"
         "for company, (_, target) in sq.COMPANIES.items():\n"
         "    print(report.day_table(f\"Company {company}, the video's weights\", video_days[company], target))\n"
         "    print()"),
    md("## Training the unit from the video's starting weights\n\n"
       "The video trained the unit in PyTorch from `torch.manual_seed(42); torch.randn(8)` with zero "
       "biases: Adam, learning rate 0.001, one sequence per step, A then B, 5000 epochs. "
       "`sq.train` does the same with Optax (about a second)."),
    code("config = sq.StatQuestConfig(progress=False)\n"
         "initial = sq.initial_table(config.initial_weights)\n"
         "learned_params, losses = sq.train(sq.params_from_table(initial), config)\n"
         "learned = sq.table_from_params(learned_params)\n"
         "print(report.weights_table(learned, sq.VIDEO_WEIGHTS, config.epochs))\n\n"
         "learned_days = sq.day_by_day(learned_params)\n"
         "for company, (_, target) in sq.COMPANIES.items():\n"
         "    print(f\"Company {company}: prediction {learned_days[company]['short_term_memory'][-1]:.6f}, \"\n"
         "          f\"target {target:g}\")"),
    md("## The gate plots\n\n"
       "The experiment writes its results and draws its plots from `metrics.json` alone. Here it runs "
       "into a temporary folder; the plots show, day by day, the three gates as percentages (top) and "
       "the potential long-term memory and both memories (bottom), first with the video's weights, "
       "then with the learned ones, then the training loss."),
    code("import contextlib\n"
         "import io\n"
         "import tempfile\n\n"
         "with contextlib.redirect_stdout(io.StringIO()):   # it prints the tables above again\n"
         "    run_dir = sq.main([\"--results-dir\", tempfile.mkdtemp(), \"--run\", \"notebook\", \"--no-progress\"])\n"
         "for name in (\"internals_video.png\", \"internals_learned.png\", \"loss.png\"):\n"
         "    display(Image(filename=run_dir / name))"),
    md("Compare the two companies' top panels: with the video's weights, what differs is day 1, where "
       "Company B's input of 1 opens the input gate and writes a large potential memory into `c`; the "
       "forget gate then keeps most of it for days 2-4, and on day 4 the output gate turns it into an "
       "output near 1."),
])


write("vanishing_gradients", [
    md("# Vanishing gradients: the tanh RNN against the LSTM\n\n"
       "How much of the gradient of a loss at the last step reaches back `d` steps? This notebook runs "
       "`experiments.vanishing_gradients` with **tiny settings** (hidden size 16, 2 seeds, T up to 100, "
       "100 training steps) so it finishes in seconds; `python -m experiments.vanishing_gradients` runs "
       "the full study (H = 32, 3 seeds, T up to 200, 300 steps), whose numbers are in "
       "[experiments/README.md](../experiments/README.md).\n\n"
       "Every model is a cell, a linear readout of its last output and a bias, scored by the MSE "
       "against the adding problem's target. For each step t the study measures ‖∂L/∂h_t‖, the "
       "gradient reaching the state after step t, at initialisation and after a short Adam run. "
       "In a tanh RNN that gradient is multiplied by one Jacobian per step back and tends to shrink "
       "geometrically; the LSTM's long-term memory `c` is carried by the forget gates alone, so with "
       "forget gates open (bias 1) it shrinks only as fast as ∏ f."),
    code("%matplotlib inline\n"
         "from experiments import _vanishing_gradients_report as report\n"
         "from experiments import vanishing_gradients as vg"),
    md("## The comparison, tiny\n\n"
       "For each model the study computes `vg.measure`: the curve ‖∂L/∂h_t‖ (mean over a fixed batch, "
       "with `lj.gradient_norms_over_time`), its ratio first/last, its fitted decay rate per step "
       "(`lj.fit_log_decay`), the distance back at which it falls below 1% (`lj.distance_to_fraction`), "
       "and for the LSTM the forget-gate gain ∏ f (`lj.forget_gate_gain`).\n\n"
       "To stay fast this notebook compares the two extremes, the tanh RNN and the LSTM with open forget "
       "gates; add `\"lstm_forget0\"` and `\"gru\"` to `cells` for the full comparison (each cell adds "
       "a few seconds of compilation). "
       "`run_experiment` trains every cell (all seeds in one compiled program), measures each at every T "
       "before and after training (in float64), and runs the exploding case: a linear RNN whose "
       "recurrent weight is 1.2 × orthogonal, trained with and without gradient clipping. It returns "
       "what the command line writes to `metrics.json`."),
    code("config = vg.VanishingGradientsConfig(\n"
         "    cells=(\"rnn_tanh\", \"lstm_forget1\"), hidden_size=16, seeds=2, lengths=(25, 100), batch_size=16,\n"
         "    train_steps=100, train_length=25, train_batch_size=32, test_size=256, progress=False)\n"
         "metrics = vg.run_experiment(config)\n"
         "summary = report.summary(metrics)\n"
         "print(report.gradient_table(summary))\n"
         "print()\n"
         "print(report.training_table(summary))\n"
         "print()\n"
         "print(report.exploding_lines(summary))"),
    md("## The gradient reaching back d steps\n\n"
       "Relative to the last step, on a log scale, at T = 100: the steeper the line, the faster the "
       "gradient vanishes. The band spans the seeds."),
    code("report.gradient_vs_distance_figure(metrics)"),
    md("## The gradient reaching step 0, as T grows"),
    code("report.step0_vs_length_figure(metrics)"),
    md("## Training on the adding problem\n\n"
       "The dashed line is the memoryless baseline (predicting the mean). With 100 steps at T = 25 the "
       "cells only begin to learn; the full study trains 300 steps at T = 50."),
    code("report.training_loss_figure(metrics)"),
    md("## Exploding gradients and clipping\n\n"
       "The linear RNN's gradient grows exactly like 1.2^d back in time; clipping the global norm "
       "before Adam keeps training stable."),
    code("report.exploding_figure(metrics)"),
])
