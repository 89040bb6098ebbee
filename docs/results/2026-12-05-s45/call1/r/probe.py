import json, torch
from minimoe.bench import roofline
from minimoe.kernels.stream_read import stream_sum
big = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)
sms = torch.cuda.get_device_properties(0).multi_processor_count
rows = []
for rnd in range(2):
    for per_sm in (1, 2, 4, 8, 16):
        for unroll in (1, 2, 4, 8):
            programs, chunk = sms * per_sm, 4096 * unroll
            x = big[: big.numel() // (programs * chunk) * programs * chunk]
            stream_sum(x, programs, unroll=unroll)
            ms = roofline.median_ms(lambda: stream_sum(x, programs, unroll=unroll), 20, big.device)
            rows.append({"round": rnd, "per_sm": per_sm, "unroll": unroll, "GBps": x.numel() * 2 / ms / 1e6})
            print(f"round {rnd} per_sm {per_sm:2d} unroll {unroll}: {rows[-1]['GBps']:7.1f} GB/s", flush=True)
del big
c = roofline.measure_ceilings("cuda")
print("measure_ceilings:", json.dumps(c))
print(json.dumps({"grid": rows, "ceilings": c}))
