"""The asyncio adapter: listeners, the session driver, data relays."""
