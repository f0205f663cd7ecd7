"""The web dashboard in a real headless browser: Debian's chromium driven by playwright
(launched with executable_path, as its own browser download cannot be reached). Each page
is loaded against the live broker with traffic, and the tests assert on what a user sees.
"""

import os
import shutil

import pika
import pytest

pytestmark = pytest.mark.skipif(bool(os.environ.get("MGMT_URL")), reason="Sluice's dashboard")

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page(broker):
    from playwright.sync_api import sync_playwright
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM} (scripts/test installs Debian's)", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(http_credentials={"username": "guest", "password": "guest"})
        page = context.new_page()
        yield page
        context.close()
        browser.close()


def goto(page, broker, name):
    page.goto(f"{broker.http_url}/#{name}")
    page.wait_for_selector(f"body[data-page='{name}']")


def test_overview_shows_totals_and_plots_message_rates(page, broker, name):
    broker.call("PUT", f"/api/queues/%2F/{name}", {"durable": False})
    goto(page, broker, "overview")
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        ch = connection.channel()
        # Traffic across a few refreshes, so the plot has rates to draw.
        for _ in range(4):
            for i in range(200):
                ch.basic_publish("", name, b"x" * 100)
            connection.process_data_events(0.1)
            page.wait_for_timeout(700)
        page.wait_for_function("""() => {
            const line = document.querySelector('#rates polyline.series-publish');
            if (!line) return false;
            const ys = line.getAttribute('points').trim().split(' ').map(p => Number(p.split(',')[1]));
            return ys.length >= 2 && Math.min(...ys) < Math.max(...ys);
        }""", timeout=20000)
        ready = page.locator("[data-total='Ready'] b").inner_text()
        assert int(ready.replace(",", "")) >= 800
        assert int(page.locator("[data-total='Connections'] b").inner_text()) >= 1
        assert "Sluice" in page.locator("#node").inner_text()
    finally:
        connection.close()
    broker.call("DELETE", f"/api/queues/%2F/{name}")


def test_queues_page_publishes_gets_purges_and_deletes(page, broker, name):
    broker.call("PUT", f"/api/queues/%2F/{name}", {"durable": True})
    goto(page, broker, "queues")
    row = page.locator("#queues-table tr", has_text=name)
    row.wait_for()
    page.fill("#publish input[name=queue]", name)
    page.fill("#publish input[name=payload]", "hello from the browser")
    page.click("#publish button")
    page.wait_for_selector("#status:has-text('published')")
    page.wait_for_function(f"""() => [...document.querySelectorAll('#queues-table tr')]
        .some(tr => tr.cells[1] && tr.cells[1].textContent === {name!r} && tr.cells[3].textContent === '1')""")
    page.fill("#get input[name=queue]", name)
    page.click("#get button")
    page.wait_for_selector("#got:has-text('hello from the browser')")
    page.locator("#queues-table tr", has_text=name).locator("button[data-purge]").click()
    page.wait_for_selector(f"#status:has-text('purged {name}')")
    page.wait_for_function(f"""() => [...document.querySelectorAll('#queues-table tr')]
        .some(tr => tr.cells[1] && tr.cells[1].textContent === {name!r} && tr.cells[3].textContent === '0')""")
    page.locator("#queues-table tr", has_text=name).locator("button[data-delete]").click()
    page.wait_for_selector(f"#status:has-text('deleted {name}')")
    assert broker.call("GET", f"/api/queues/%2F/{name}")[0] == 404


def test_queues_page_shows_each_queue_s_rates(page, broker, name):
    broker.call("PUT", f"/api/queues/%2F/{name}", {"durable": False})
    goto(page, broker, "queues")
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        ch = connection.channel()
        for _ in range(5):
            for i in range(300):
                ch.basic_publish("", name, b"x")
            connection.process_data_events(0.1)
            page.wait_for_timeout(500)
        # "In msg/s" is the 7th column.
        page.wait_for_function(f"""() => [...document.querySelectorAll('#queues-table tr')]
            .some(tr => tr.cells[1] && tr.cells[1].textContent === {name!r}
                  && Number(tr.cells[6].textContent.replace(/,/g, '')) > 0)""", timeout=20000)
    finally:
        connection.close()
    broker.call("DELETE", f"/api/queues/%2F/{name}")


def test_topics_and_groups_pages_show_partitions_and_lag(page, broker, name):
    from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
    producer = KafkaProducer(bootstrap_servers=broker.kafka_bootstrap)
    for i in range(6):
        producer.send(name, f"r{i}".encode(), partition=0)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.kafka_bootstrap, group_id=name + "-g",
                             enable_auto_commit=False)
    consumer.commit({TopicPartition(name, 0): OffsetAndMetadata(2, None, -1)})
    consumer.close()
    goto(page, broker, "topics")
    row = page.locator("#partitions-table tr", has_text=name)
    row.wait_for()
    assert row.locator("td").nth(3).inner_text() == "6", "end offset"
    goto(page, broker, "groups")
    lag = page.locator("#lag-table tr", has_text=name + "-g")
    lag.wait_for()
    cells = [c.inner_text() for c in lag.locator("td").all()]
    assert cells[1:] == [name, "0", "2", "6", "4"]


def test_connections_page_lists_and_closes_a_connection(page, broker, name):
    params = pika.URLParameters(broker.amqp_url)
    params.client_properties = {"connection_name": name}
    connection = pika.BlockingConnection(params)
    try:
        goto(page, broker, "connections")
        row = page.locator("#connections-table tr", has_text=name)
        row.wait_for()
        row.locator("button[data-close]").click()
        page.wait_for_selector("#status:has-text('closed')")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(50):
                connection.process_data_events(0.1)
        assert closed.value.reply_text == "CONNECTION_FORCED - closed from the dashboard"
    finally:
        if connection.is_open:
            connection.close()
