"""Every register constant the drivers write or rely on, against a source nobody here wrote.

The emulators are built from the same constants as the drivers, so a shared mistake
would pass every other test. Each row below names the value the driver uses and where
the expected value comes from: the Linux IIO driver (file and symbol, torvalds/linux),
Adafruit's CircuitPython drivers, or another field-proven driver. A row fails when the
driver's constant disagrees with its reference.
"""

from __future__ import annotations

import pytest

from edge_recorder.sensors import icm42688 as icm
from edge_recorder.sensors import lsm6ds as lsm
from edge_recorder.sensors import mpu6050 as mpu

MPU_H = "linux drivers/iio/imu/inv_mpu6050/inv_mpu_iio.h"
MPU_CORE = "linux drivers/iio/imu/inv_mpu6050/inv_mpu_core.c hw_info[]"
MPU_RING = "linux drivers/iio/imu/inv_mpu6050/inv_mpu_ring.c inv_mpu6050_read_fifo"
MPU_MAP = "MPU-6000/6050 Register Map rev 4.2 §4.15-4.16 (INT_ENABLE, INT_STATUS)"
LSM_CORE = "linux drivers/iio/imu/st_lsm6dsx/st_lsm6dsx_core.c st_lsm6dsx_sensor_settings[]"
LSM_BUF = "linux drivers/iio/imu/st_lsm6dsx/st_lsm6dsx_buffer.c"
LSM_H = "linux drivers/iio/imu/st_lsm6dsx/st_lsm6dsx.h"
ICM_H = "linux drivers/iio/imu/inv_icm42600/inv_icm42600.h"
ICM_BUF = "linux drivers/iio/imu/inv_icm42600/inv_icm42600_buffer.h"
ICM_TEMP = "linux drivers/iio/imu/inv_icm42600/inv_icm42600_temp.c inv_icm42600_temp_read_raw"
ICM_ACCEL = "linux drivers/iio/imu/inv_icm42600/inv_icm42600_accel.c"


def linux_mpu6050_set_lpf(rate: float) -> int:
    """Linux inv_mpu_core.c inv_mpu6050_set_lpf, transcribed: the first hz[] the rate
    reaches picks d[]; enum inv_mpu6050_filter_e numbers them 1 (188/200 Hz) … 6 (5 Hz)."""
    hz = (400, 200, 90, 40, 20, 10)
    d = (1, 2, 3, 4, 5, 6)  # FILTER_200HZ, _100HZ, _45HZ, _20HZ, _10HZ, _5HZ
    return next((f for h, f in zip(hz, d) if rate >= h), 6)


MPU = [
    # (what, the driver's value, the reference's value, reference)
    ("WHO_AM_I register", mpu.WHO_AM_I, 117, f"{MPU_H} INV_MPU6050_REG_WHOAMI"),
    ("MPU-6050 id", {v: k for k, v in mpu.Mpu6050.chip_ids.items()}["MPU-6050"], 0x68,
     f"{MPU_H} INV_MPU6050_WHOAMI_VALUE"),
    ("MPU-9250 id", {v: k for k, v in mpu.Mpu6050.chip_ids.items()}["MPU-9250"], 0x71,
     f"{MPU_H} INV_MPU9250_WHOAMI_VALUE"),
    ("MPU-9255 id", {v: k for k, v in mpu.Mpu6050.chip_ids.items()}["MPU-9255"], 0x73,
     f"{MPU_H} INV_MPU9255_WHOAMI_VALUE"),
    ("SMPLRT_DIV", mpu.SMPLRT_DIV, 0x19, f"{MPU_H} INV_MPU6050_REG_SAMPLE_RATE_DIV"),
    ("CONFIG", mpu.CONFIG, 0x1A, f"{MPU_H} INV_MPU6050_REG_CONFIG"),
    ("GYRO_CONFIG", mpu.GYRO_CONFIG, 0x1B, f"{MPU_H} INV_MPU6050_REG_GYRO_CONFIG"),
    ("ACCEL_CONFIG", mpu.ACCEL_CONFIG, 0x1C, f"{MPU_H} INV_MPU6050_REG_ACCEL_CONFIG"),
    ("ACCEL_CONFIG_2", mpu.ACCEL_CONFIG_2, 0x1D, f"{MPU_H} INV_MPU6500_REG_ACCEL_CONFIG_2"),
    ("FS_SEL shift", mpu.FS_SEL.shift, 3, f"{MPU_H} INV_MPU6050_GYRO_CONFIG_FSR_SHIFT"),
    ("AFS_SEL shift", mpu.AFS_SEL.shift, 3, f"{MPU_H} INV_MPU6050_ACCL_CONFIG_FSR_SHIFT"),
    ("±2/4/8/16 g codes", [mpu.ACCEL_FS_CODE[g] for g in (2, 4, 8, 16)], [0, 1, 2, 3],
     f"{MPU_H} enum inv_mpu6050_accl_fs_e"),
    ("±250..2000 °/s codes", [mpu.GYRO_FS_CODE[d] for d in (250, 500, 1000, 2000)],
     [0, 1, 2, 3], f"{MPU_H} enum inv_mpu6050_fsr_e"),
    ("FIFO_EN", mpu.FIFO_EN, 0x23, f"{MPU_H} INV_MPU6050_REG_FIFO_EN"),
    ("FIFO_EN accel", mpu.FIFO_EN_ACCEL, 0x08, f"{MPU_H} INV_MPU6050_BIT_ACCEL_OUT"),
    ("FIFO_EN gyro", mpu.FIFO_EN_GYRO_XYZ, 0x70, f"{MPU_H} INV_MPU6050_BITS_GYRO_OUT"),
    ("FIFO_EN temp", mpu.FIFO_EN_TEMP, 0x80, f"{MPU_H} INV_MPU6050_BIT_TEMP_OUT"),
    ("INT_ENABLE", mpu.INT_ENABLE, 0x38, f"{MPU_H} INV_MPU6050_REG_INT_ENABLE"),
    ("INT_ENABLE.FIFO_OFLOW_EN", mpu.FIFO_OFLOW_EN.encode(1), 0x10, MPU_MAP),
    ("INT_STATUS", mpu.INT_STATUS, 0x3A, f"{MPU_H} INV_MPU6050_REG_INT_STATUS"),
    ("FIFO overflow flag", mpu.FIFO_OFLOW_INT, 0x10,
     f"{MPU_H} INV_MPU6050_BIT_FIFO_OVERFLOW_INT"),
    ("ACCEL_XOUT_H", mpu.ACCEL_XOUT_H, 0x3B, f"{MPU_H} INV_MPU6050_REG_RAW_ACCEL"),
    ("SIGNAL_PATH_RESET", mpu.SIGNAL_PATH_RESET, 0x68,
     f"{MPU_H} INV_MPU6050_REG_SIGNAL_PATH_RESET"),
    ("signal path reset all", mpu.SIGNAL_PATH_RESET_ALL, 0x07,
     f"{MPU_H} INV_MPU6050_BIT_TEMP_RST | _ACCEL_RST | _GYRO_RST"),
    ("USER_CTRL", mpu.USER_CTRL, 0x6A, f"{MPU_H} INV_MPU6050_REG_USER_CTRL"),
    ("USER_CTRL.FIFO_EN", mpu.USER_FIFO_EN.encode(1), 0x40, f"{MPU_H} INV_MPU6050_BIT_FIFO_EN"),
    ("USER_CTRL.FIFO_RST", mpu.USER_FIFO_RESET.encode(1), 0x04,
     f"{MPU_H} INV_MPU6050_BIT_FIFO_RST"),
    ("PWR_MGMT_1", mpu.PWR_MGMT_1, 0x6B, f"{MPU_H} INV_MPU6050_REG_PWR_MGMT_1"),
    ("H_RESET", mpu.DEVICE_RESET.encode(1), 0x80, f"{MPU_H} INV_MPU6050_BIT_H_RESET"),
    ("SLEEP", mpu.SLEEP.encode(1), 0x40, f"{MPU_H} INV_MPU6050_BIT_SLEEP"),
    ("CLKSEL mask", mpu.CLKSEL.mask, 0x07, f"{MPU_H} INV_MPU6050_BIT_CLK_MASK"),
    ("CLKSEL PLL", mpu.CLKSEL_PLL_GYRO_X, 1, f"{MPU_H} enum inv_mpu6050_clock_sel_e INV_CLK_PLL"),
    ("FIFO_COUNT_H", mpu.FIFO_COUNT_H, 0x72, f"{MPU_H} INV_MPU6050_REG_FIFO_COUNT_H"),
    ("FIFO_R_W", mpu.FIFO_R_W, 0x74, f"{MPU_H} INV_MPU6050_REG_FIFO_R_W"),
    ("MPU-6050 FIFO bytes", mpu.VARIANTS["MPU-6050"].fifo_bytes, 1024,
     f"{MPU_CORE} MPU6050 .fifo_size"),
    ("MPU-9250 FIFO bytes", mpu.VARIANTS["MPU-9250"].fifo_bytes, 512,
     f"{MPU_CORE} MPU9250 .fifo_size"),
    ("MPU-6050 temp offset", mpu.MPU6050.temp_offset_lsb, 12420,
     f"{MPU_H} INV_MPU6050_TEMP_OFFSET"),
    ("MPU-6050 temp scale", mpu.MPU6050.temp_scale_nano_c, 2941176,
     f"{MPU_H} INV_MPU6050_TEMP_SCALE"),
    ("MPU-9250 temp offset", mpu.VARIANTS["MPU-9250"].temp_offset_lsb, 7011,
     f"{MPU_H} INV_MPU6500_TEMP_OFFSET"),
    ("MPU-9250 temp scale", mpu.VARIANTS["MPU-9250"].temp_scale_nano_c, 2995178,
     f"{MPU_H} INV_MPU6500_TEMP_SCALE"),
    ("wait after reset, ms", round(mpu.RESET_WAIT_S * 1000), 100,
     f"{MPU_H} INV_MPU6050_POWER_UP_TIME"),
    ("wait after wake, ms", round(mpu.WAKE_WAIT_S * 1000), 5,
     f"{MPU_H} INV_MPU6050_REG_UP_TIME_MIN (µs)"),
    ("MPU-6050 gyro start-up, ms", round(mpu.MPU6050.gyro_startup_s * 1000), 60,
     f"{MPU_H} INV_MPU6050_GYRO_STARTUP_TIME"),
    ("MPU-9250 gyro start-up, ms", round(mpu.VARIANTS["MPU-9250"].gyro_startup_s * 1000), 70,
     f"{MPU_H} INV_MPU6500_GYRO_STARTUP_TIME"),
    ("overflow margin, frames", mpu.FIFO_MARGIN_FRAMES, 3, f"{MPU_RING} nb = 3 * bytes_per_datum"),
    ("DLPF_CFG per configurable rate", {r: mpu.dlpf_for_rate(r) for r in mpu.Mpu6050.rates_hz},
     {r: linux_mpu6050_set_lpf(r) for r in mpu.Mpu6050.rates_hz},
     "linux inv_mpu_core.c inv_mpu6050_set_lpf hz[] = {400, 200, 90, 40, 20, 10}"),
    ("DLPF gyro bandwidths, Hz", [mpu.DLPF_BANDWIDTH_HZ[c] for c in range(1, 7)],
     [188, 98, 42, 20, 10, 5], f"{MPU_H} enum inv_mpu6050_filter_e _188HZ … _5HZ"),
    ("internal rate with DLPF", mpu.GYRO_OUTPUT_RATE_DLPF_HZ, 1000,
     f"{MPU_H} INV_MPU6050_INTERNAL_FREQ_HZ"),
]

LSM = [
    ("WHO_AM_I register", lsm.WHO_AM_I, 0x0F, f"{LSM_H} ST_LSM6DSX_REG_WHOAMI_ADDR"),
    ("LSM6DS3 / DS3H id", {v: k for k, v in lsm.Lsm6ds.chip_ids.items()}[lsm.CHIP_DS3], 0x69,
     f"{LSM_CORE} .wai = 0x69 (LSM6DS3, LSM6DS3H)"),
    ("LSM6DS3TR-C id", {v: k for k, v in lsm.Lsm6ds.chip_ids.items()}[lsm.CHIP_DS3TRC], 0x6A,
     f"{LSM_CORE} .wai = 0x6a"),
    ("LSM6DSO/DSOX id", {v: k for k, v in lsm.Lsm6ds.chip_ids.items()}[lsm.CHIP_DSOX], 0x6C,
     f"{LSM_CORE} .wai = 0x6c"),
    ("CTRL3_C (reset/boot/bdu)", lsm.CTRL3_C, 0x12, f"{LSM_CORE} .reset/.boot/.bdu .addr 0x12"),
    ("SW_RESET", lsm.SW_RESET.encode(1), 0x01, f"{LSM_CORE} .reset .mask BIT(0)"),
    ("BOOT", lsm.BOOT.encode(1), 0x80, f"{LSM_CORE} .boot .mask BIT(7)"),
    ("BDU", lsm.CTRL3_BDU, 0x40, f"{LSM_CORE} .bdu .mask BIT(6)"),
    ("waits after SW_RESET and BOOT, ms", (round(lsm.RESET_WAIT_S * 1000),
                                           round(lsm.BOOT_WAIT_S * 1000)), (50, 50),
     f"{LSM_CORE} st_lsm6dsx_reset_device msleep(50) ×2"),
    ("accel ODR field", (lsm.CTRL1_XL, lsm.ODR_XL.mask), (0x10, 0xF0),
     f"{LSM_CORE} odr_table[ACC] .addr 0x10 GENMASK(7, 4)"),
    ("gyro ODR field", (lsm.CTRL2_G, lsm.ODR_G.mask), (0x11, 0xF0),
     f"{LSM_CORE} odr_table[GYRO] .addr 0x11 GENMASK(7, 4)"),
    ("ODR codes 12.5..833 Hz", [lsm.ODR_CODE[hz] for hz in (12.5, 26, 52, 104, 208, 416, 833)],
     [1, 2, 3, 4, 5, 6, 7], f"{LSM_CORE} .odr_avl {{12500, 0x01}} … {{833000, 0x07}}"),
    ("accel FS field", (lsm.CTRL1_XL, lsm.FS_XL.mask), (0x10, 0x0C),
     f"{LSM_CORE} fs_table[ACC] .addr 0x10 GENMASK(3, 2)"),
    ("accel FS codes ±2/4/8/16 g", [lsm.ACCEL_FS_CODE[g] for g in (2, 4, 8, 16)],
     [0x0, 0x2, 0x3, 0x1], f"{LSM_CORE} fs_avl 61000:0x0, 122000:0x2, 244000:0x3, 488000:0x1"),
    ("accel µg/LSB", [round(lsm.ACCEL_MG_PER_LSB[g] * 1000) for g in (2, 4, 8, 16)],
     [61, 122, 244, 488], f"{LSM_CORE} fs_avl IIO_G_TO_M_S_2(61000 …)"),
    ("gyro FS field", (lsm.CTRL2_G, lsm.FS_G.mask), (0x11, 0x0C),
     f"{LSM_CORE} fs_table[GYRO] .addr 0x11 GENMASK(3, 2)"),
    ("gyro FS codes 250..2000 °/s", [lsm.GYRO_FS_CODE[d] for d in (250, 500, 1000, 2000)],
     [0, 1, 2, 3], f"{LSM_CORE} fs_avl 8750000:0x0 … 70000000:0x3"),
    ("gyro mdps/LSB", [lsm.GYRO_MDPS_PER_LSB[d] for d in (250, 500, 1000, 2000)],
     [8.75, 17.5, 35.0, 70.0], f"{LSM_CORE} IIO_DEGREE_TO_RAD(8750000 …) (µdps)"),
    ("FIFO mode register (DSOX)", lsm.FIFO_CTRL4, 0x0A, f"{LSM_BUF} ST_LSM6DSX_REG_FIFO_MODE_ADDR"),
    ("FIFO modes bypass/continuous", (lsm.FIFO_MODE_BYPASS, lsm.FIFO_MODE_CONTINUOUS),
     (0x0, 0x6), f"{LSM_H} enum st_lsm6dsx_fifo_mode"),
    ("FIFO_DATA_OUT_TAG", lsm.FIFO_DATA_OUT_TAG, 0x78,
     f"{LSM_BUF} ST_LSM6DSX_REG_FIFO_OUT_TAG_ADDR"),
    ("DS3 FIFO data", lsm.DS3_FIFO_DATA_OUT_L, 0x3E, f"{LSM_BUF} ST_LSM6DSX_REG_FIFO_OUTL_ADDR"),
    ("FIFO status (level)", lsm.FIFO_STATUS1, 0x3A, f"{LSM_CORE} .fifo_diff .addr 0x3a"),
    ("DS3 level mask", lsm.DS3_DIFF_MASK, 0xFFF, f"{LSM_CORE} DS3 .fifo_diff GENMASK(11, 0)"),
    ("DSOX level mask", lsm.DSOX_DIFF_MASK, 0x3FF, f"{LSM_CORE} DSOX .fifo_diff GENMASK(9, 0)"),
    ("tags gyro/accel", (lsm.TAG_GYRO, lsm.TAG_ACCEL), (0x01, 0x02),
     f"{LSM_BUF} enum st_lsm6dsx_fifo_tag"),
    ("tagged word bytes", lsm.TAGGED_WORD_BYTES, 7, f"{LSM_H} ST_LSM6DSX_TAGGED_SAMPLE_SIZE"),
    ("invalid (bootstrap) sample", lsm.INVALID_SAMPLE, 0x7FFD,
     f"{LSM_BUF} ST_LSM6DSX_INVALID_SAMPLE"),
    ("DSOX FIFO words", lsm.FIFO_BYTES[lsm.CHIP_DSOX] // lsm.TAGGED_WORD_BYTES, 512,
     f"{LSM_CORE} .wai 0x6c max_fifo_size 512"),
    ("sample bytes", lsm.DS3_SAMPLE_BYTES, 6, f"{LSM_H} ST_LSM6DSX_SAMPLE_SIZE"),
    ("0x69 FIFO (DS3H: 682 samples × 6 B)", lsm.FIFO_BYTES[lsm.CHIP_DS3], 682 * 6,
     f"{LSM_CORE} LSM6DS3H max_fifo_size 682"),
    ("LSM6DS3 FIFO (1365 samples × 6 B)", lsm.DS3_FIFO_BYTES, 1365 * 6,
     f"{LSM_CORE} .wai 0x69 LSM6DS3 max_fifo_size 1365"),
    ("LSM6DS3TR-C FIFO (682 samples × 6 B)", lsm.FIFO_BYTES[lsm.CHIP_DS3TRC], 682 * 6,
     f"{LSM_CORE} .wai 0x6a (LSM6DSL/DSM/ISM330DLC/LSM6DS3TR-C) max_fifo_size 682"),
    ("I3C_DISABLE", (lsm.CTRL9_XL, lsm.I3C_DISABLE.encode(1)), (0x18, 0x02),
     "Adafruit_CircuitPython_LSM6DS lsm6dsox.py _i3c_disable = RWBit(_LSM6DS_CTRL9_XL, 1)"),
    ("FIFO_OVR_LATCHED", lsm.STATUS2_OVR_LATCHED, 0x08,
     "Arduino_LSM6DSOX LSM6DSOXFIFO.cpp readStatus: FIFO_OVR_LATCHED = status2 & 0x08"),
]

ICM = [
    ("WHO_AM_I register", icm.WHO_AM_I, 0x75, f"{ICM_H} INV_ICM42600_REG_WHOAMI"),
    ("ICM-42688 id", next(iter(icm.Icm42688.chip_ids)), 0x47,
     f"{ICM_H} INV_ICM42600_WHOAMI_ICM42688"),
    ("REG_BANK_SEL", icm.REG_BANK_SEL, 0x76, f"{ICM_H} INV_ICM42600_REG_BANK_SEL"),
    ("DEVICE_CONFIG", icm.DEVICE_CONFIG, 0x11, f"{ICM_H} INV_ICM42600_REG_DEVICE_CONFIG"),
    ("SOFT_RESET", icm.SOFT_RESET.encode(1), 0x01,
     f"{ICM_H} INV_ICM42600_DEVICE_CONFIG_SOFT_RESET"),
    ("FIFO_CONFIG", (icm.FIFO_CONFIG, icm.FIFO_MODE.mask), (0x16, 0xC0),
     f"{ICM_H} INV_ICM42600_REG_FIFO_CONFIG, _FIFO_CONFIG_MASK"),
    ("stream mode", icm.FIFO_MODE_STREAM, 1, f"{ICM_H} INV_ICM42600_FIFO_CONFIG_STREAM"),
    ("invalid sample", icm.INVALID, -32768, f"{ICM_H} INV_ICM42600_DATA_INVALID"),
    ("INT_STATUS", icm.INT_STATUS, 0x2D, f"{ICM_H} INV_ICM42600_REG_INT_STATUS"),
    ("RESET_DONE", icm.RESET_DONE_INT, 0x10, f"{ICM_H} INV_ICM42600_INT_STATUS_RESET_DONE"),
    ("FIFO_FULL", icm.FIFO_FULL_INT, 0x02, f"{ICM_H} INV_ICM42600_INT_STATUS_FIFO_FULL"),
    ("FIFO_COUNT", icm.FIFO_COUNTH, 0x2E, f"{ICM_H} INV_ICM42600_REG_FIFO_COUNT"),
    ("FIFO_DATA", icm.FIFO_DATA, 0x30, f"{ICM_H} INV_ICM42600_REG_FIFO_DATA"),
    ("SIGNAL_PATH_RESET", icm.SIGNAL_PATH_RESET, 0x4B,
     f"{ICM_H} INV_ICM42600_REG_SIGNAL_PATH_RESET"),
    ("FIFO_FLUSH", icm.FIFO_FLUSH, 0x02, f"{ICM_H} INV_ICM42600_SIGNAL_PATH_RESET_FIFO_FLUSH"),
    ("INTF_CONFIG0", icm.INTF_CONFIG0, 0x4C, f"{ICM_H} INV_ICM42600_REG_INTF_CONFIG0"),
    ("UI_SIFS_CFG SPI off", icm.UI_SIFS_CFG.encode(icm.UI_SIFS_CFG_SPI_DIS), 0x02,
     f"{ICM_H} INV_ICM42600_INTF_CONFIG0_UI_SIFS_CFG_SPI_DIS"),
    ("PWR_MGMT0", icm.PWR_MGMT0, 0x4E, f"{ICM_H} INV_ICM42600_REG_PWR_MGMT0"),
    ("gyro+accel low noise", icm.PWR_GYRO_ACCEL_LOW_NOISE, (3 << 2) | 3,
     f"{ICM_H} PWR_MGMT0_GYRO(GENMASK(3,2)) | _ACCEL(GENMASK(1,0)), mode LOW_NOISE = 3"),
    ("GYRO_CONFIG0 FS/ODR", (icm.GYRO_CONFIG0, icm.GYRO_FS_SEL.mask, icm.GYRO_ODR.mask),
     (0x4F, 0xE0, 0x0F), f"{ICM_H} INV_ICM42600_REG_GYRO_CONFIG0 FS GENMASK(7,5) ODR (3,0)"),
    ("ACCEL_CONFIG0 FS/ODR", (icm.ACCEL_CONFIG0, icm.ACCEL_FS_SEL.mask, icm.ACCEL_ODR.mask),
     (0x50, 0xE0, 0x0F), f"{ICM_H} INV_ICM42600_REG_ACCEL_CONFIG0"),
    ("ODR codes 8k..12.5, 500 Hz",
     [icm.ODR_CODE[hz] for hz in (8000, 4000, 2000, 1000, 200, 100, 50, 25, 12.5, 500)],
     [3, 4, 5, 6, 7, 8, 9, 10, 11, 15], f"{ICM_H} enum inv_icm42600_odr"),
    ("accel FS codes 16/8/4/2 g", [icm.ACCEL_FS_CODE[g] for g in (16, 8, 4, 2)], [0, 1, 2, 3],
     f"{ICM_H} enum inv_icm42600_accel_fs"),
    ("gyro FS codes 2000..125 °/s", [icm.GYRO_FS_CODE[d] for d in (2000, 1000, 500, 250, 125)],
     [0, 1, 2, 3, 4], f"{ICM_H} enum inv_icm42600_gyro_fs"),
    ("FIFO_CONFIG1 accel|gyro|temp", icm.FIFO_ACCEL_GYRO_TEMP, 0x07,
     f"{ICM_H} FIFO_CONFIG1_ACCEL_EN BIT(0) | GYRO_EN BIT(1) | TEMP_EN BIT(2)"),
    ("FIFO_CONFIG1", icm.FIFO_CONFIG1, 0x5F, f"{ICM_H} INV_ICM42600_REG_FIFO_CONFIG1"),
    ("FIFO bytes", icm.Icm42688.fifo_bytes_by_variant["ICM-42688-P"], 2048,
     f"{ICM_H} INV_ICM42600_FIFO_WATERMARK_MAX \"FIFO is 2048 bytes\""),
    ("packet bytes", icm.PACKET.size, 16, f"{ICM_BUF} INV_ICM42600_FIFO_2SENSORS_PACKET_SIZE"),
    ("header: empty", icm.HEADER_EMPTY, 0x80, f"{ICM_BUF} INV_ICM42600_FIFO_HEADER_MSG"),
    ("header: accel|gyro", icm.HEADER_ACCEL_GYRO, 0x60,
     f"{ICM_BUF} INV_ICM42600_FIFO_HEADER_ACCEL BIT(6) | _GYRO BIT(5)"),
    # FIFO temperature is int8; Linux scales it to the 16-bit register's LSB ("convert 8 bits
    # FIFO temperature in high resolution format": *temp * 64), whose °C = raw / 132.48 + 25
    ("FIFO temperature LSB/°C", round(icm.FIFO_TEMP_LSB_PER_C, 6), round(132.48 / 64, 6),
     f"{ICM_TEMP} T = temp / 132.48 + 25; {ICM_ACCEL} inv_icm42600_accel_parse_fifo *temp * 64"),
    ("temperature offset, °C", icm.TEMP_OFFSET_C, 25, f"{ICM_TEMP} T = temp / 132.48 + 25"),
    ("reset wait, ms", round(icm.RESET_WAIT_S * 1000), 1, f"{ICM_H} INV_ICM42600_RESET_TIME_MS"),
    ("gyro start-up, ms", round(icm.GYRO_STARTUP_S * 1000), 60,
     f"{ICM_H} INV_ICM42600_GYRO_STARTUP_TIME_MS"),
]


@pytest.mark.parametrize("what, ours, reference, source", MPU, ids=[r[0] for r in MPU])
def test_mpu6050_constants_match_their_reference(what, ours, reference, source):
    assert ours == reference, f"{what}: driver has {ours!r}, {source} says {reference!r}"


@pytest.mark.parametrize("what, ours, reference, source", LSM, ids=[r[0] for r in LSM])
def test_lsm6ds_constants_match_their_reference(what, ours, reference, source):
    assert ours == reference, f"{what}: driver has {ours!r}, {source} says {reference!r}"


@pytest.mark.parametrize("what, ours, reference, source", ICM, ids=[r[0] for r in ICM])
def test_icm42688_constants_match_their_reference(what, ours, reference, source):
    assert ours == reference, f"{what}: driver has {ours!r}, {source} says {reference!r}"
