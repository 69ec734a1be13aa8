import pytest

from fleetapp.settings import SettingError, settings_from_environ


def test_typed_settings_from_environment():
    settings = settings_from_environ(
        {
            "CELERY_TASK_ACKS_LATE": "true",
            "CELERY_TASK_REJECT_ON_WORKER_LOST": "False",
            "CELERY_WORKER_PREFETCH_MULTIPLIER": "1",
            "CELERY_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 7200}',
            "CELERY_BROKER_URL": "redis://:secret@broker1:6379/0",
            "CELERY_TASK_TIME_LIMIT": "600",
            "PATH": "/usr/bin",
        }
    )
    assert settings == {
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": 7200},
        "broker_url": "redis://:secret@broker1:6379/0",
        "task_time_limit": 600,
    }


def test_cli_variables_are_not_settings():
    assert settings_from_environ({"CELERY_APP": "fleetapp", "CELERY_CONFIG_MODULE": "x"}) == {}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("CELERY_TASK_ACKS_LAET", "true", "no Celery setting is called 'task_acks_laet'"),
        ("CELERY_TASK_ACKS_LATE", "maybe", "not a boolean"),
        ("CELERY_WORKER_PREFETCH_MULTIPLIER", "one", "CELERY_WORKER_PREFETCH_MULTIPLIER"),
        ("CELERY_BROKER_TRANSPORT_OPTIONS", "[1, 2]", "expected a JSON object"),
        ("CELERY_BROKER_TRANSPORT_OPTIONS", "{oops", "CELERY_BROKER_TRANSPORT_OPTIONS"),
    ],
)
def test_bad_values_fail_with_the_variable_name(key, value, message):
    with pytest.raises(SettingError, match=message):
        settings_from_environ({key: value})
