"""What the runs take from the host for the model's device: the automatic row budget (max_rows 0) counts
the memory the host says a model call may use for this model (the patcher's own count where it has one:
current ComfyUI's, which in dynamic VRAM mode adds what the offloader can give back; else the device's
free memory), and the C heap settings apply only where the model computes on the CPU."""
import torch

from revpers_core import heap, row_budget


def test_the_automatic_row_budget_reads_the_patchers_own_free_memory(pack, tiny_sdxl):
    runs = pack.nodes._diffusion_runs
    model = tiny_sdxl["identity"].clone()
    shape = (3, 4, 8, 8)
    one, two = (float(model.model.memory_required([n, 4, 8, 8])) for n in (1, 2))
    per_row = max(two - one, 1.0)
    fixed = max(one - per_row, 0.0)
    room_for = lambda rows: (fixed + rows * per_row) / row_budget.FREE_MEMORY_SHARE + 1.0  # noqa: E731

    model.get_free_memory = lambda device: room_for(2)  # one face (both branches) per call
    assert runs.face_chunks(model, shape, 3, 0) == [(0, 1), (1, 2), (2, 3)]
    model.get_free_memory = lambda device: room_for(6)
    assert runs.face_chunks(model, shape, 3, 0) == [(0, 3)]
    assert runs.free_memory(model) == room_for(6)
    del model.get_free_memory  # the class's own count (current hosts), else the device's (a live figure)
    assert runs.free_memory(model) > 0
    assert runs.face_chunks(model, shape, 3, 4) == [(0, 2), (2, 3)]  # a given max_rows counts no memory
    assert torch.device(model.load_device).type == "cpu"


def test_the_heap_settings_are_for_runs_on_the_cpu_only(pack, tiny_sdxl):
    runs = pack.nodes._diffusion_runs
    model = tiny_sdxl["identity"].clone()
    with runs.heap_settings(model) as kept:  # the CPU: glibc's settings take where they can
        assert kept == (heap.can_release() and not heap.user_tuned())
    model.load_device = torch.device("cuda", 0)  # only read: nothing runs on it
    with runs.heap_settings(model) as kept:
        assert kept is False
