//! Legacy devices of the Hiber guest: serial port, i8042 and CMOS RTC.
