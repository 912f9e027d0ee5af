"""The metering service: admission, settlement and the usage ledger."""
