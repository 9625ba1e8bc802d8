def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: builds the project from a clean copy (a minute or two); the suite "
        "runs it, `-m 'not slow'` leaves it out while iterating",
    )
