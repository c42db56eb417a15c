"""The naive baseline as a process of its own, for the CPU-budget section.

A Pi tutorial's loop for two sensors at 1 kHz (MPU-6050 and ICM-42688, emulated in this
process as in the daemon): every millisecond read each chip's data registers, build a
JSON document, publish it with paho (QoS 0). Paced to a 1 ms deadline rather than the
tutorial's fixed ``time.sleep(0.001)``, so that with a whole core it can keep up.

A data register holds only the newest sample: a read that comes late misses the samples
in between. The emulator's sample counter (the truth, not something a real loop could
read) tells how many were missed. Prints one JSON line: samples, dropped, cpu_s, wall_s,
wakeups (context switches of all its threads).

    python -m benchmarks.naive_loop PORT SECONDS
"""

from __future__ import annotations

import json
import math
import resource
import struct
import sys
import time

import paho.mqtt.client as paho

from edge_recorder.sensors import icm42688 as icm_reg
from edge_recorder.sensors import mpu6050 as mpu_reg
from edge_recorder.sensors.emulation import EmulatedBus, EmulatedIcm42688, EmulatedMpu6050

PERIOD_S = 0.001
ICM_TEMP_DATA1 = 0x1D  # temperature, then accel and gyro x/y/z: 14 bytes, big-endian


def context_switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of the process
    return usage.ru_nvcsw + usage.ru_nivcsw


def main() -> int:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    mpu, icm = EmulatedMpu6050(), EmulatedIcm42688()
    bus = EmulatedBus({0x68: mpu, 0x69: icm})
    bus.write(0x68, mpu_reg.PWR_MGMT_1, 0)  # wake
    bus.write(0x68, mpu_reg.CONFIG, 1)  # DLPF on: 1 kHz gyro output rate
    bus.write(0x68, mpu_reg.SMPLRT_DIV, 0)
    bus.write(0x69, icm_reg.PWR_MGMT0, icm_reg.PWR_GYRO_ACCEL_LOW_NOISE)  # 1 kHz by default
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    a_mpu, g_mpu = 9.80665 / 8192, math.pi / 180 / 65.5
    a_icm, g_icm = 9.80665 / 2048, math.pi / 180 / 16.4
    sensors = ((0x68, mpu, mpu_reg.ACCEL_XOUT_H, "mpu"), (0x69, icm, ICM_TEMP_DATA1, "icm"))
    last = {name: chip.samples_generated for _a, chip, _r, name in sensors}
    samples = dropped = 0
    cpu0, t0, switches0 = time.process_time(), time.monotonic(), context_switches()
    next_tick = t0
    end = t0 + seconds
    while time.monotonic() < end:
        for address, chip, register, name in sensors:
            raw = struct.unpack(">7h", bus.read(address, register, 14))
            fresh = chip.samples_generated - last[name]
            last[name] = chip.samples_generated
            if fresh <= 0:
                continue  # the same sample again: a real loop would record it twice
            samples += 1
            dropped += fresh - 1
            if name == "mpu":
                doc = {"t": time.time(), "ax": raw[0] * a_mpu, "ay": raw[1] * a_mpu,
                       "az": raw[2] * a_mpu, "temp": raw[3] / 340 + 36.53,
                       "gx": raw[4] * g_mpu, "gy": raw[5] * g_mpu, "gz": raw[6] * g_mpu}
            else:
                doc = {"t": time.time(), "temp": raw[0] / 132.48 + 25, "ax": raw[1] * a_icm,
                       "ay": raw[2] * a_icm, "az": raw[3] * a_icm, "gx": raw[4] * g_icm,
                       "gy": raw[5] * g_icm, "gz": raw[6] * g_icm}
            client.publish(f"naive/{name}", json.dumps(doc), qos=0)
        next_tick += PERIOD_S
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -PERIOD_S:
            next_tick = time.monotonic()  # behind: do not try to catch up in a burst
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    wakeups = context_switches() - switches0
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"samples": samples, "dropped": dropped, "cpu_s": cpu, "wall_s": wall,
                      "wakeups": wakeups}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
